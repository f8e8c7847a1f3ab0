"""ModernBERT-base shapes and recipe (Warner et al. 2024), on our packed-row MLM pretraining.

    python -m pretrain.train --config=configs/modernbert_base.py --workdir=gs://BUCKET/mbert_base \
        --config.data.train_files=gs://BUCKET/built_packed_1024 \
        --config.data.eval_files=gs://BUCKET/built_packed_1024_eval

Build the data with `python -m data_pipeline.build --objective=packed --max_seq_length=1024`.
22 layers x 768, 12 heads, GeGLU with 1152 per half, no biases, pre-LayerNorm (eps 1e-5), RoPE
(base 160 000 in the global layers, every third from the first; 10 000 in the local ones, a
128-token window), 30% masking, no dropout, AdamW (ModernBERT used StableAdamW) at 8e-4 with a
warmup-stable-decay schedule, batch 4608 x 1024 tokens. Sequences of 1024 first, as ModernBERT's
phase 1; extend to 8192 with a second run on longer rows.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """ModernBERT-base: 22 x 768, sequences of 1024, the modern recipe."""
    c = default.get_config()
    c.num_train_steps = 400_000  # ~1.9 T tokens at 4608 x 1024 per step.
    c.global_batch_size = 4608
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5_000

    c.data.objective = "packed"
    c.data.vocab_size = 50368  # ModernBERT's tokenizer size (rounded for tensor cores).
    c.data.max_seq_length = 1024
    c.data.masked_lm_prob = 0.3
    c.data.max_predictions_per_seq = 320  # 30% of 1024 is 307.

    c.model.arch = "modernbert"
    c.model.num_hidden_layers = 22
    c.model.hidden_size = 768
    c.model.num_attention_heads = 12
    c.model.intermediate_size = 1152
    c.model.hidden_dropout_prob = 0.0
    c.model.attention_probs_dropout_prob = 0.0
    c.model.max_position_embeddings = 8192
    c.model.layer_norm_eps = 1e-5
    c.model.global_attn_every_n_layers = 3
    c.model.local_attention = 128
    c.model.attention_impl = "xla"  # On GPUs "cudnn" (dropout is off); see docs/performance.md.

    c.optimizer.learning_rate = 8e-4
    c.optimizer.warmup_steps = 3_000
    c.optimizer.decay = "wsd"
    c.optimizer.decay_fraction = 0.1
    c.optimizer.weight_decay = 1e-5
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-6
    return c
