"""Smoke test of the modern recipe: a tiny ModernBERT-class encoder on the bundled sample corpus.

    python -m pretrain.train --config=configs/modernbert_smoke.py --workdir=/tmp/modernbert_smoke

Same budget as `configs/smoke.py` (600 steps of 32 x 128 tokens on CPU, a 4k-piece tokenizer
trained into the workdir), with the recipe of ModernBERT, MosaicBERT and Cramming: pre-norm,
rotary positions, GeGLU, local/global attention, packed rows of whole documents (no padding),
30% masking, MLM only, no dropout, a higher learning rate and a warmup-stable-decay schedule.
"""

import ml_collections

from configs import modernbert_base


def get_config() -> ml_collections.ConfigDict:
    """ModernBERT-class recipe at smoke size: 2 layers x 128 on data/sample, float32 on CPU."""
    c = modernbert_base.get_config()
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
    c.data.max_predictions_per_seq = 40  # 30% of 128 is 38.
    c.data.verify_shards = True  # A small corpus: checking every shard at start is cheap.

    c.model.num_hidden_layers = 2
    c.model.hidden_size = 128
    c.model.num_attention_heads = 2
    c.model.intermediate_size = 192  # Each GeGLU half (1.5 H, as ModernBERT-base's 1152 / 768).
    c.model.max_position_embeddings = 128
    c.model.local_attention = 64

    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 60
    return c
