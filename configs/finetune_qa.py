"""Fine-tuning a pretrained encoder for extractive question answering (SQuAD v1.1 / v2.0).

    python -m pretrain.finetune --config=configs/finetune_qa.py --workdir=/tmp/squad \
        --config.init_from=/tmp/bert_smoke \
        --config.data.train_file=train-v1.1.json --config.data.eval_file=dev-v1.1.json

Files in SQuAD's JSON layout (v2.0 questions may be `is_impossible`), or `tfds:squad[:SPLIT]`.
A question and its context become windows of `max_seq_length` tokens, `doc_stride` apart; the
model scores each context token as answer start and end; the best span of at most
`max_answer_length` tokens over all windows is mapped back to the context's characters. With
v2.0 data the null answer wins when its score beats the best span's by `null_score_threshold`.
Eval rows: eval_exact_match, eval_f1 (the official SQuAD normalization), eval_loss; WORKDIR/best
keeps the best F1. Recipe: BERT's SQuAD v1.1 (AdamW 3e-5, batch 32, length 384, stride 128).
"""

import ml_collections

from configs import finetune_common


def get_config() -> ml_collections.ConfigDict:
    """Extractive QA from SQuAD JSON or TFDS."""
    c = finetune_common.get_config("qa")
    c.optimizer.learning_rate = 3e-5  # BERT's SQuAD v1.1 setting.
    c.data.max_seq_length = 384  # Question + context window, [CLS] and [SEP]s included.
    c.data.doc_stride = 128  # Context tokens between the starts of consecutive windows.
    c.data.max_query_length = 64  # Question tokens kept (the rest are cut).
    c.data.max_answer_length = 30  # Longest answer span predicted, in tokens.
    c.data.null_score_threshold = 0.0  # v2.0: null wins if its score > best span's + this.
    c.data.version_2 = False  # Allow unanswerable questions (set True for SQuAD v2.0 data).
    c.lock()
    return c
