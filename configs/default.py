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
    c.eval_every_steps = 10_000  # Full eval pass every this many steps and at the end (0: never).
    c.eval_batch_size = 256  # Sequences per eval batch (the last one is padded and masked out).
    c.max_eval_batches = 0  # Cap on eval batches per evaluation (0: the whole eval set).
    c.checkpoint_every_steps = 10_000  # Async orbax save every this many steps, and at the end.
    c.keep_checkpoints = 3  # Newest checkpoints kept on disk.
    c.dtype = "bfloat16"  # Compute dtype: 'bfloat16' | 'float32'. Parameters stay float32.
    c.max_bad_steps = 0  # Non-finite steps skipped (update dropped) before the run stops.
    c.prefetch_batches = 2  # Batches built and put on devices ahead of the step.
    c.task = "mlm"  # 'mlm': masked LM (+ NSP) | 'distill': the same, also learning from distill.*.

    # Distillation (task='distill'): the teacher is frozen in the same step, never saved.
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""  # A pretraining workdir of `pretrain.train` with the same tokenizer.
    c.distill.temperature = 2.0  # T: both MLM logits / T before the softmax; KL scaled by T^2.
    c.distill.soft_weight = 0.5  # Weight of T^2 KL(teacher || student) at the masked positions.
    c.distill.hard_weight = 0.5  # Weight of the student's own MLM (+ NSP) loss.
    # DistilBERT's init: the student's encoder starts as the teacher's embeddings and every
    # (L_teacher / L_student)-th layer; needs the teacher's arch and widths, and no init_from.
    c.distill.init_layers = False

    c.data = data_config()
    c.model = model_config()
    c.optimizer = optimizer_config()
    c.mesh = mesh_config()
    c.benchmark = benchmark_config()
    c.lock()  # Unknown keys (typos in overrides or recipes) now raise instead of being added.
    return c


def data_config() -> ml_collections.ConfigDict:
    """`config.data`: the corpus, the tokenizer and the masking."""
    # Data: BERT text format (one sentence per line, blank line between documents).
    c = ml_collections.ConfigDict()
    # Comma-separated globs, 'tfds:NAME[:split]' (a TFDS text field), or a directory built by
    # `python -m data_pipeline.build` (text is built into WORKDIR/data_cache on first start).
    c.train_files = ""
    c.eval_files = ""  # Same format; a separate, fixed eval set (empty: no eval).
    c.tfds_text_feature = "text"  # Feature holding the document text in a tfds:NAME source.
    c.tokenizer_model = ""  # Sentencepiece .model; empty: train one into WORKDIR first.
    c.objective = "nsp"  # 'nsp': sentence pairs, MLM + NSP | 'packed': full rows, MLM only.
    c.vocab_size = 30522  # Size of the tokenizer to train (ignored when one is given).
    c.max_seq_length = 128  # Tokens per sequence, [CLS] and [SEP]s included.
    c.max_predictions_per_seq = 20  # Cap on masked positions per sequence.
    c.masked_lm_prob = 0.15  # Fraction of tokens chosen for prediction.
    c.whole_word_masking = False  # Mask every piece of a chosen word together.
    c.short_seq_prob = 0.1  # Probability of a shorter target length (original BERT).
    c.random_next_prob = 0.5  # Probability that segment B comes from another document.
    c.dupe_factor = 1  # NSP instance-building passes over the corpus (masks are dynamic).
    c.lower_case = True  # Lower-case text before tokenizing (uncased BERT).
    c.verify_shards = False  # Check every shard's sha256 at start, before compiling (reads all).
    return c


def model_config() -> ml_collections.ConfigDict:
    """`config.model`: BERT-base (Devlin et al. 2019)."""
    c = ml_collections.ConfigDict()
    c.arch = "bert"  # 'bert' (post-LN, learned positions) | 'modernbert' (pre-norm, RoPE, GeGLU).
    c.num_hidden_layers = 12  # Transformer layers (L).
    c.hidden_size = 768  # Width of the residual stream (H).
    c.num_attention_heads = 12  # Attention heads (A); must divide hidden_size.
    c.intermediate_size = 3072  # MLP width (BERT: usually 4H; ModernBERT: each GeGLU half).
    c.hidden_act = "gelu"  # 'gelu' (exact erf, as original BERT) | 'gelu_tanh'.
    c.hidden_dropout_prob = 0.1  # Dropout on embeddings and residual branches.
    c.attention_probs_dropout_prob = 0.1  # Dropout on attention probabilities.
    c.max_position_embeddings = 512  # Longest sequence (BERT: learned positions); >= seq length.
    c.type_vocab_size = 2  # Segment (token type) embeddings.
    c.initializer_range = 0.02  # Std of the truncated-normal initializer.
    c.layer_norm_eps = 1e-12  # LayerNorm epsilon (original BERT; ModernBERT 1e-5).
    c.global_attn_every_n_layers = 3  # ModernBERT: layers 0, n, 2n, ... attend globally.
    c.local_attention = 128  # ModernBERT: the other layers' window (tokens, both sides together).
    c.global_rope_theta = 160_000.0  # ModernBERT: rotary base of the global layers.
    c.local_rope_theta = 10_000.0  # ModernBERT: rotary base of the local layers.
    c.classifier_pooling = "cls"  # ModernBERT classifiers: 'cls' | 'mean' (real tokens).
    # 'xla' | 'cudnn' (jax.nn.dot_product_attention) | 'einsum' | 'splash' (TPU) | 'pallas_gpu'.
    c.attention_impl = "xla"
    c.splash_block_q = 512  # Splash query block (clamped to, and must divide, the length).
    c.splash_block_kv = 512  # Splash key / value block: as splash_block_q, for the keys.
    c.remat_policy = "none"  # 'none' | 'full' | 'dots' (save matmuls, recompute the rest).
    return c


def optimizer_config() -> ml_collections.ConfigDict:
    """`config.optimizer`: the original BERT recipe."""
    # Optimizer: original BERT recipe (Adam with decoupled weight decay, warmup, linear decay).
    c = ml_collections.ConfigDict()
    c.name = "adamw"  # 'adamw' | 'lamb'.
    c.learning_rate = 1e-4  # Peak learning rate, reached after warmup.
    c.warmup_steps = 10_000  # Linear warmup from 0.
    c.decay = "linear"  # After warmup: 'linear' | 'polynomial' | 'constant' | 'wsd' (trapezoid).
    c.decay_fraction = 0.1  # 'wsd': the last fraction of the steps decays; the peak holds before.
    c.decay_power = 1.0  # Power of the polynomial decay (1.0 is linear).
    c.end_learning_rate = 0.0  # Learning rate at num_train_steps.
    c.weight_decay = 0.01  # Decoupled weight decay; never on biases or LayerNorm.
    c.b1 = 0.9  # Adam beta1.
    c.b2 = 0.999  # Adam beta2.
    c.eps = 1e-6  # Adam epsilon (original BERT).
    c.max_grad_norm = 1.0  # Global-norm clipping (0: off).
    return c


def mesh_config() -> ml_collections.ConfigDict:
    """`config.mesh`: devices along each axis and the logical-axis rules."""
    # Mesh: devices along each axis; their product is the device count. -1: all the rest.
    c = ml_collections.ConfigDict()
    c.data = -1  # Pure data parallelism (parameters replicated).
    c.fsdp = 1  # Data parallelism with parameters and optimizer state sharded.
    c.tensor = 1  # Tensor parallelism: heads and MLP columns split.
    # Logical axis -> mesh axes. Parameters and activations name logical axes only.
    c.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("kv", None),
        ("norm", None),
        ("classes", None),
    )
    return c


def benchmark_config() -> ml_collections.ConfigDict:
    """`config.benchmark`: timing of the train step and the input pipeline."""
    # Benchmark (`python -m pretrain.benchmark`): timing of the train step and the input pipeline.
    c = ml_collections.ConfigDict()
    c.warmup_steps = 3  # Train steps run after compilation and before timing starts.
    c.timed_steps = 20  # Train steps timed one by one; the median is reported.
    c.input_batches = 20  # Successive loader batches timed for the input pipeline.
    c.peak_flops_per_device = 0.0  # FLOP/s for MFU; 0: from the device table.
    return c
