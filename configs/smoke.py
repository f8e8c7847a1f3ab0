"""Smoke test: a tiny BERT pretrained on the bundled sample corpus in minutes on a laptop CPU.

    python -m pretrain.train --config=configs/smoke.py --workdir=/tmp/bert_smoke

Trains a 4k-piece sentencepiece tokenizer into the workdir first, then runs 600 steps of
masked-LM + NSP; the MLM loss falls from ln(4000) ≈ 8.3 by well over a nat.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """BERT-tiny-like model on data/sample, float32 on CPU."""
    c = default.get_config()
    c.num_train_steps = 600
    c.global_batch_size = 32
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.eval_batch_size = 64
    c.max_eval_batches = 4
    c.checkpoint_every_steps = 200
    c.dtype = "float32"  # CPUs have no fast bf16 matmuls.

    c.data.train_files = "data/sample/train.txt"
    c.data.eval_files = "data/sample/eval.txt"
    c.data.vocab_size = 4000
    c.data.max_seq_length = 128
    c.data.max_predictions_per_seq = 20
    c.data.verify_shards = True  # A small corpus: checking every shard at start is cheap.

    c.model.num_hidden_layers = 2
    c.model.hidden_size = 128
    c.model.num_attention_heads = 2
    c.model.intermediate_size = 512
    c.model.max_position_embeddings = 128

    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 60
    return c
