"""Fine-tuning an encoder into a sentence-embedding model for retrieval (contrastive).

    python -m pretrain.finetune --config=configs/finetune_retrieval.py --workdir=/tmp/retrieval \
        --config.init_from=/tmp/bert_smoke \
        --config.data.train_file=pairs.tsv --config.data.eval_file=BEIR_DIR

Training rows are `query<TAB>positive[<TAB>negative...]`; the eval set is a BEIR folder
(`corpus.jsonl`, `queries.jsonl`, `qrels/<data.eval_split>.tsv`). Each query's positive is
scored against every passage of the global batch (in-batch negatives, gathered over all
devices) plus the hard negatives: InfoNCE, the multiple-negatives ranking loss of
sentence-transformers. Eval rows: eval_ndcg_at_10, eval_mrr_at_10, eval_recall_at_1 / 10 / 100,
eval_map (BEIR's definitions); WORKDIR/best keeps the best nDCG@10. Recipe: sentence-transformers'
MNRL defaults (lr 2e-5, 10% warmup, temperature 0.05 = scale 20, mean pooling); larger batches
give more negatives and usually better embeddings.
"""

import ml_collections

from configs import finetune_common


def get_config() -> ml_collections.ConfigDict:
    """Contrastive fine-tuning on query/passage pairs, evaluated on a BEIR folder."""
    c = finetune_common.get_config("retrieval")
    c.global_batch_size = 64  # Pairs per step: every other passage of the batch is a negative.
    c.classifier_dropout = 0.0  # No classifier: the embedding is the pooled encoder output.
    c.data.max_seq_length = 128  # Passage tokens, [CLS] and [SEP] included.
    c.data.max_query_length = 32  # Query tokens, [CLS] and [SEP] included.
    c.data.num_negatives = -1  # Hard negatives per row used: -1 as many as every row has.
    c.data.eval_split = "test"  # The BEIR qrels file: qrels/<eval_split>.tsv.
    c.retrieval = ml_collections.ConfigDict()
    c.retrieval.pooling = "mean"  # 'mean' | 'cls' | 'last' (token), then L2-normalized.
    c.retrieval.temperature = 0.05  # Softmax temperature of the scores (scale 1 / 0.05 = 20).
    c.retrieval.learn_temperature = False  # Learn it (from `temperature`; scale capped at 100).
    c.retrieval.symmetric = False  # Also score each positive against every query, averaged.
    # Embed the batch in this many chunks under remat (GradCache's memory, the same loss and
    # gradient: only embeddings are kept); grad_accum_steps would lose the global negatives.
    c.retrieval.embed_chunks = 1
    c.lock()
    return c
