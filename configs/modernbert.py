"""ModernBERT shapes and recipe (Warner et al. 2024) on our packed-row MLM pretraining; pick the
size by argument: base | large (no argument: base).

    python -m pretrain.train --config=configs/modernbert.py:base --workdir=gs://BUCKET/mbert_base \
        --config.data.train_files=gs://BUCKET/built_packed_1024 \
        --config.data.eval_files=gs://BUCKET/built_packed_1024_eval

Build the data with `python -m data_pipeline.build --objective=packed --max_seq_length=1024`.
Base: 22 layers x 768, 12 heads, GeGLU with 1152 per half; large: 28 x 1024, 16 heads, 2624 per
half. No biases, pre-LayerNorm (eps 1e-5), RoPE (base 160 000 in the global layers, every third
from the first; 10 000 in the local ones, a 128-token window), 30% masking, no dropout, AdamW
(ModernBERT used StableAdamW) at 8e-4 (large: 5e-4) with a warmup-stable-decay schedule, batch
4608 x 1024 tokens. Sequences of 1024 first, as ModernBERT's phase 1; extend to 8192 with a
second run on longer rows. `configs/modernbert_{base,large}.py` are this file at one size.
"""

import ml_collections

from configs import default

# Per size: (num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, peak lr).
SIZES = {
    "base": (22, 768, 12, 1152, 8e-4),  # ModernBERT-base.
    "large": (28, 1024, 16, 2624, 5e-4),  # ModernBERT-large.
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ModernBERT at size `arg` (--config=configs/modernbert.py:SIZE), sequences of 1024."""
    size = arg or "base"
    if size not in SIZES:
        raise ValueError(f"unknown ModernBERT size {size!r}: use one of {', '.join(SIZES)}.")
    c = default.get_config()
    c.num_train_steps = 400_000  # ~1.9 T tokens at 4608 x 1024 per step.
    c.global_batch_size = 4608  # Sequences per step.
    c.eval_every_steps = 10_000  # Eval every this many steps.
    c.checkpoint_every_steps = 5_000  # Saves every this many steps.

    c.data.objective = "packed"  # MLM only, documents packed into full rows.
    c.data.vocab_size = 50368  # ModernBERT's tokenizer size (rounded for tensor cores).
    c.data.max_seq_length = 1024  # Phase 1 length.
    c.data.masked_lm_prob = 0.3  # 30% masking.
    c.data.max_predictions_per_seq = 320  # 30% of 1024 is 307.

    m = c.model
    m.arch = "modernbert"  # Pre-norm, RoPE, GeGLU, local/global attention, no biases.
    m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.intermediate_size, lr = SIZES[size]
    m.hidden_dropout_prob = 0.0  # No dropout (ModernBERT, Cramming).
    m.attention_probs_dropout_prob = 0.0  # Same.
    m.max_position_embeddings = 8192  # Longest context (phase 2).
    m.layer_norm_eps = 1e-5  # ModernBERT's epsilon.
    m.global_attn_every_n_layers = 3  # Layers 0, 3, 6, ... attend globally.
    m.local_attention = 128  # The others' window.
    # On GPUs "cudnn" (dropout is off); on TPUs "splash": at 32 x 1024 per chip it needs 30 GiB
    # where "xla" keeps 50 (docs/running_on_a_pod.md); "xla" runs anywhere, the CPU included.
    m.attention_impl = "xla"

    c.optimizer.learning_rate = lr  # Peak.
    c.optimizer.warmup_steps = 3_000  # Linear warmup from 0.
    c.optimizer.decay = "wsd"  # Warmup-stable-decay (trapezoid).
    c.optimizer.decay_fraction = 0.1  # The last 10% of the steps decay.
    c.optimizer.weight_decay = 1e-5  # ModernBERT's.
    c.optimizer.b2 = 0.98  # Adam beta2.
    c.optimizer.eps = 1e-6  # Adam epsilon.
    return c
