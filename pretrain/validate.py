"""Cheap checks of a pretraining config, run before anything expensive (data, compile).

Each failure is a `ValueError` whose message names the key, the bad value and the fix; the CLI
prints it as one line and exits non-zero.
"""

from __future__ import annotations

import ml_collections

_DTYPES = ("bfloat16", "float32")


def _positive(config: ml_collections.ConfigDict, *keys: str) -> None:
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"config.{key} must be a positive integer, got {value!r}.")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Values that are wrong whatever the hardware."""
    _positive(
        config,
        "num_train_steps",
        "global_batch_size",
        "grad_accum_steps",
        "log_every_steps",
        "checkpoint_every_steps",
        "eval_batch_size",
        "keep_checkpoints",
        "data.max_seq_length",
        "data.max_predictions_per_seq",
        "model.num_hidden_layers",
        "model.hidden_size",
        "model.num_attention_heads",
        "model.intermediate_size",
    )
    if config.dtype not in _DTYPES:
        raise ValueError(f"config.dtype must be one of {_DTYPES}, got {config.dtype!r}.")
    if not config.data.train_files:
        raise ValueError(
            "config.data.train_files is empty; set it to a glob of text files "
            "(one sentence per line, blank line between documents) or tfds:NAME."
        )
    model, data = config.model, config.data
    if model.hidden_size % model.num_attention_heads:
        raise ValueError(
            f"config.model.hidden_size ({model.hidden_size}) is not divisible by "
            f"config.model.num_attention_heads ({model.num_attention_heads}); pick sizes where "
            f"it is (e.g. 768 and 12)."
        )
    if data.max_seq_length > model.max_position_embeddings:
        raise ValueError(
            f"config.data.max_seq_length ({data.max_seq_length}) exceeds "
            f"config.model.max_position_embeddings ({model.max_position_embeddings}); raise the "
            f"latter or shorten the sequences."
        )
    if data.max_predictions_per_seq > data.max_seq_length - 3:
        raise ValueError(
            f"config.data.max_predictions_per_seq ({data.max_predictions_per_seq}) cannot exceed "
            f"max_seq_length - 3 ({data.max_seq_length - 3}): [CLS] and two [SEP] are never "
            f"masked. Lower it (BERT: 20 at length 128, 80 at 512)."
        )
    if config.max_bad_steps < 0:
        raise ValueError(f"config.max_bad_steps must be >= 0, got {config.max_bad_steps}.")


def check_batch_layout(config: ml_collections.ConfigDict, data_parallel: int) -> None:
    """The global batch must split evenly over data-parallel devices and microbatches."""
    per_step = data_parallel * config.grad_accum_steps
    if config.global_batch_size % per_step:
        raise ValueError(
            f"config.global_batch_size ({config.global_batch_size}) is not divisible by "
            f"data-parallel devices ({data_parallel}) x config.grad_accum_steps "
            f"({config.grad_accum_steps}) = {per_step}; use a multiple of {per_step}."
        )
    if config.eval_batch_size % data_parallel:
        raise ValueError(
            f"config.eval_batch_size ({config.eval_batch_size}) is not divisible by the "
            f"{data_parallel} data-parallel devices; use a multiple of {data_parallel}."
        )
