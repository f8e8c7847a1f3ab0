"""The modern recipe at the largest size a 2-core CPU pretrains in half an hour: 4 x 256.

    python -m pretrain.train --config=configs/modernbert_cpu.py --workdir=/tmp/mbert_cpu \
        --config.data.train_files=/tmp/gcide/train.txt \
        --config.data.eval_files=/tmp/gcide/eval.txt \
        --config.data.tokenizer_model=/tmp/gcide/sp8k.model

The corpus and tokenizer come from `scripts/make_reference_corpus.py` and
`python -m data_pipeline.tokenizer` (docs/quality.md has the whole experiment:
`python benchmarks/cpu_quality.py`). BERT-mini's width and depth (Turc et al. 2019) with
ModernBERT's layer (pre-norm, RoPE, GeGLU at 1.5 H per half, no biases, local windows of 64 in
two of every three layers), packed rows of 128, 30% masking, no dropout, AdamW at 1e-3 with a
warmup-stable-decay schedule; 600 steps of 32 x 128 tokens, the budget of `configs/smoke.py`.
"""

import ml_collections

from configs import modernbert_base


def get_config() -> ml_collections.ConfigDict:
    """ModernBERT-class 4 x 256 on a CPU, float32, 600 steps of 32 x 128."""
    c = modernbert_base.get_config()
    c.num_train_steps = 600  # ~10 min on 2 cores; raise it for a longer run (the WSD tail follows).
    c.global_batch_size = 32  # Sequences per step.
    c.log_every_steps = 50  # Train rows every this many steps.
    c.eval_every_steps = 200  # Eval (15% masking) every this many steps and at the end.
    c.eval_batch_size = 64  # Rows per eval batch.
    c.max_eval_batches = 10  # 640 rows of 128: ~80k eval tokens.
    c.checkpoint_every_steps = 200  # Checkpoints for resume and for fine-tuning.
    c.dtype = "float32"  # CPUs have no fast bf16 matmuls.

    c.data.train_files = ""  # BERT text format or a built folder (set on the command line).
    c.data.eval_files = ""  # Same.
    c.data.vocab_size = 8000  # Size of the tokenizer trained into the workdir if none is given.
    c.data.max_seq_length = 128  # Tokens per packed row.
    c.data.max_predictions_per_seq = 40  # 30% of 128 is 38.
    c.data.verify_shards = True  # A small corpus: checking every shard at start is cheap.

    c.model.num_hidden_layers = 4  # BERT-mini depth.
    c.model.hidden_size = 256  # BERT-mini width.
    c.model.num_attention_heads = 4  # Head dim 64.
    c.model.intermediate_size = 384  # Each GeGLU half, 1.5 H (ModernBERT-base: 1152 / 768).
    c.model.max_position_embeddings = 512  # RoPE has no table: only a bound on the length.
    c.model.local_attention = 64  # Window of the local layers (32 either side).

    c.optimizer.learning_rate = 1e-3  # Peak; the rate the Hugging Face peer run uses.
    c.optimizer.warmup_steps = 60  # 10% of 600.
    c.optimizer.decay_fraction = 0.2  # Linear decay over the last 20% of the steps.
    return c
