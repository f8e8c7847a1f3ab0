"""Every pretraining field, with its default and one comment each.

Size and recipe configs (`smoke.py`, `mini.py`, `base.py`, ...) import this file and override
fields. Any field can be overridden from the command line:

    python -m pretrain.train --config=configs/default.py --workdir=/tmp/bert \
        --config.num_train_steps=1000 --config.model.hidden_size=256

The config is locked: a misspelled override fails before anything runs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the default pretraining config (BERT-base recipe at sequence length 128)."""
    c = ml_collections.ConfigDict()

    c.seed = 0  # Seeds init, data order, masks and dropout; same seed + step = same batch.
    c.num_train_steps = 1_000_000  # Optimizer steps to run (original BERT: 1M).
    c.global_batch_size = 256  # Sequences per optimizer step, all devices and microbatches.
    c.grad_accum_steps = 1  # Microbatches per step, accumulated inside the jitted step.
    c.log_every_steps = 100  # Train metrics row + progress line every this many steps.
    c.eval_every_steps = 10_000  # Full pass over the eval set every this many steps (0: never).
    c.eval_batch_size = 256  # Sequences per eval batch (the last one is padded and masked out).
    c.max_eval_batches = 0  # Cap on eval batches per evaluation (0: the whole eval set).
    c.checkpoint_every_steps = 10_000  # Async orbax save every this many steps, and at the end.
    c.keep_checkpoints = 3  # Newest checkpoints kept on disk.
    c.dtype = "bfloat16"  # Compute dtype: 'bfloat16' | 'float32'. Parameters stay float32.
    c.max_bad_steps = 0  # Non-finite steps skipped (update dropped) before the run stops.
    c.prefetch_batches = 2  # Batches built and put on devices ahead of the step.

    # Data: BERT text format (one sentence per line, blank line between documents).
    c.data = ml_collections.ConfigDict()
    c.data.train_files = (
        ""  # Comma-separated globs, or 'tfds:NAME[:split]' to read a TFDS text field.
    )
    c.data.eval_files = ""  # Same format; a separate, fixed eval set (empty: no eval).
    c.data.tfds_text_feature = "text"  # Feature holding the document text in a tfds:NAME source.
    c.data.tokenizer_model = ""  # Sentencepiece .model; empty: train one into WORKDIR first.
    c.data.vocab_size = 30522  # Size of the tokenizer to train (ignored when one is given).
    c.data.max_seq_length = 128  # Tokens per sequence, [CLS] and [SEP]s included.
    c.data.max_predictions_per_seq = 20  # Cap on masked positions per sequence.
    c.data.masked_lm_prob = 0.15  # Fraction of tokens chosen for prediction.
    c.data.whole_word_masking = False  # Mask every piece of a chosen word together.
    c.data.short_seq_prob = 0.1  # Probability of a shorter target length (original BERT).
    c.data.random_next_prob = 0.5  # Probability that segment B comes from another document.
    c.data.dupe_factor = 1  # Instance-building passes over the corpus (masks are dynamic).
    c.data.lower_case = True  # Lower-case text before tokenizing (uncased BERT).

    # Model: BERT-base (Devlin et al. 2019).
    c.model = ml_collections.ConfigDict()
    c.model.num_hidden_layers = 12  # Transformer layers (L).
    c.model.hidden_size = 768  # Width of the residual stream (H).
    c.model.num_attention_heads = 12  # Attention heads (A); must divide hidden_size.
    c.model.intermediate_size = 3072  # MLP width (usually 4H).
    c.model.hidden_act = "gelu"  # 'gelu' (exact erf, as original BERT) | 'gelu_tanh'.
    c.model.hidden_dropout_prob = 0.1  # Dropout on embeddings and residual branches.
    c.model.attention_probs_dropout_prob = 0.1  # Dropout on attention probabilities.
    c.model.max_position_embeddings = 512  # Learned positions; >= data.max_seq_length.
    c.model.type_vocab_size = 2  # Segment (token type) embeddings.
    c.model.initializer_range = 0.02  # Std of the truncated-normal initializer.
    c.model.layer_norm_eps = 1e-12  # LayerNorm epsilon (original BERT).
    c.model.attention_impl = "xla"  # 'xla' | 'cudnn' (jax.nn.dot_product_attention) | 'einsum'.
    c.model.remat_policy = "none"  # 'none' | 'full' | 'dots' (save matmuls, recompute the rest).

    # Optimizer: original BERT recipe (Adam with decoupled weight decay, warmup, linear decay).
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # 'adamw' | 'lamb'.
    c.optimizer.learning_rate = 1e-4  # Peak learning rate, reached after warmup.
    c.optimizer.warmup_steps = 10_000  # Linear warmup from 0.
    c.optimizer.decay = "linear"  # 'linear' | 'polynomial' | 'constant' after warmup.
    c.optimizer.decay_power = 1.0  # Power of the polynomial decay (1.0 is linear).
    c.optimizer.end_learning_rate = 0.0  # Learning rate at num_train_steps.
    c.optimizer.weight_decay = 0.01  # Decoupled weight decay; never on biases or LayerNorm.
    c.optimizer.b1 = 0.9  # Adam beta1.
    c.optimizer.b2 = 0.999  # Adam beta2.
    c.optimizer.eps = 1e-6  # Adam epsilon (original BERT).
    c.optimizer.max_grad_norm = 1.0  # Global-norm clipping (0: off).

    # Mesh: devices along each axis; their product is the device count. -1: all the rest.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Pure data parallelism (parameters replicated).
    c.mesh.fsdp = 1  # Data parallelism with parameters and optimizer state sharded.
    c.mesh.tensor = 1  # Tensor parallelism: heads and MLP columns split.
    # Logical axis -> mesh axes. Parameters and activations name logical axes only.
    c.mesh.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("kv", None),
        ("norm", None),
        ("classes", None),
    )

    # Benchmark (`python -m pretrain.benchmark`): timing of the train step and the input pipeline.
    c.benchmark = ml_collections.ConfigDict()
    c.benchmark.warmup_steps = 3  # Train steps run after compilation and before timing starts.
    c.benchmark.timed_steps = 20  # Train steps timed one by one; the median is reported.
    c.benchmark.input_batches = 20  # Successive loader batches timed for the input pipeline.
    c.benchmark.peak_flops_per_device = 0.0  # FLOP/s for MFU; 0: from the device table.

    c.lock()  # Unknown keys (typos in overrides or recipes) now raise instead of being added.
    return c
