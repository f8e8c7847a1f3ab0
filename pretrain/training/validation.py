"""Cheap checks of a config, run before anything expensive (data, compile, writing files).

One module for pretraining and fine-tuning: the keys they share are checked by `check_common`;
each command adds its own. A failure is a `ConfigError` whose message names the key, the bad
value and the fix; the command line prints it as one line and exits 2. Model fields are checked
where they are used, by `pretrain/models/config.py`.
"""

from __future__ import annotations

from collections.abc import Collection

import ml_collections
from absl import logging

from data_pipeline.errors import ConfigError

DTYPES = ("bfloat16", "float32")
_COMMON_POSITIVE = (
    "num_train_steps",
    "global_batch_size",
    "grad_accum_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "eval_batch_size",
    "keep_checkpoints",
    "data.max_seq_length",
)


def _value(config: ml_collections.ConfigDict, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _positive(config: ml_collections.ConfigDict, *keys: str) -> None:
    for key in keys:
        value = _value(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"config.{key} must be a positive integer, got {value!r}.")


def _non_negative(config: ml_collections.ConfigDict, *keys: str) -> None:
    for key in keys:
        value = _value(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"config.{key} must be an integer >= 0, got {value!r}.")


def _in_range(config: ml_collections.ConfigDict, key: str, low: float, high: float,
              *, high_open: bool = False) -> None:  # fmt: skip
    value = _value(config, key)
    if (
        not isinstance(value, int | float)
        or not (low <= value <= high)
        or (high_open and value == high)
    ):
        bracket = ")" if high_open else "]"
        raise ConfigError(f"config.{key}={value!r} must be in [{low}, {high}{bracket}.")


def check_common(config: ml_collections.ConfigDict) -> None:
    """The keys every training command has: step counts, batch sizes, cadences, dtype."""
    _positive(config, *_COMMON_POSITIVE)
    _non_negative(config, "seed", "max_bad_steps", "eval_every_steps", "prefetch_batches")
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype must be one of {DTYPES}, got {config.dtype!r}.")
    check_optimizer(config)


def check_optimizer(config: ml_collections.ConfigDict) -> None:
    """config.optimizer: values that no schedule or optimizer can use."""
    opt = config.optimizer
    if opt.name not in ("adamw", "lamb"):
        raise ConfigError(f"config.optimizer.name must be 'adamw' or 'lamb', got {opt.name!r}.")
    if not opt.learning_rate > 0:
        raise ConfigError(f"config.optimizer.learning_rate must be > 0, got {opt.learning_rate}.")
    warmup = opt.warmup_steps
    if warmup == -1 and "warmup_fraction" in opt:
        _in_range(config, "optimizer.warmup_fraction", 0.0, 1.0)
    elif not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"config.optimizer.warmup_steps must be >= 0, got {warmup!r}.")
    elif warmup > config.num_train_steps:
        # A shortened trial run of a stock config (the first thing users try): warm up over the
        # whole run (optimizer.warmup_steps clips it) rather than refuse.
        logging.warning(
            "config.optimizer.warmup_steps=%d exceeds config.num_train_steps=%d; warming up "
            "over all %d steps.",
            warmup,
            config.num_train_steps,
            config.num_train_steps,
        )
    if opt.decay not in ("linear", "polynomial", "constant", "wsd"):
        raise ConfigError(
            "config.optimizer.decay must be 'linear', 'polynomial', 'constant' or 'wsd', "
            f"got {opt.decay!r}."
        )
    if "decay_fraction" in opt:
        _in_range(config, "optimizer.decay_fraction", 0.0, 1.0)
    if not opt.decay_power > 0:
        raise ConfigError(f"config.optimizer.decay_power must be > 0, got {opt.decay_power}.")
    _in_range(config, "optimizer.end_learning_rate", 0.0, float(opt.learning_rate))
    _in_range(config, "optimizer.b1", 0.0, 1.0, high_open=True)
    _in_range(config, "optimizer.b2", 0.0, 1.0, high_open=True)
    for key in ("weight_decay", "max_grad_norm"):
        if not opt[key] >= 0:
            raise ConfigError(f"config.optimizer.{key} must be >= 0, got {opt[key]}.")
    if not opt.eps > 0:
        raise ConfigError(f"config.optimizer.eps must be > 0, got {opt.eps}.")
    if "layerwise_lr_decay" in opt and not 0 < opt.layerwise_lr_decay <= 1:
        raise ConfigError(
            f"config.optimizer.layerwise_lr_decay must be in (0, 1], got {opt.layerwise_lr_decay}."
        )


def check_pretraining(config: ml_collections.ConfigDict) -> None:
    """A pretraining config: the common keys, the model sizes and the masking sizes."""
    check_common(config)
    _non_negative(config, "max_eval_batches", "benchmark.warmup_steps")
    _positive(config, "data.dupe_factor", "benchmark.timed_steps", "benchmark.input_batches")
    _in_range(config, "data.masked_lm_prob", 0.0, 1.0)
    _in_range(config, "data.short_seq_prob", 0.0, 1.0)
    _in_range(config, "data.random_next_prob", 0.0, 1.0)
    if not config.data.masked_lm_prob > 0:
        raise ConfigError("config.data.masked_lm_prob must be > 0: nothing would be predicted.")
    if not config.data.tokenizer_model and config.data.vocab_size <= 5:
        raise ConfigError(
            f"config.data.vocab_size={config.data.vocab_size} leaves no room beside the 5 "
            "special tokens: use thousands (BERT: 30522)."
        )
    if config.data.max_seq_length < 8:
        raise ConfigError(
            f"config.data.max_seq_length={config.data.max_seq_length} is too short: use >= 8."
        )
    _positive(
        config,
        "data.max_predictions_per_seq",
        "model.num_hidden_layers",
        "model.hidden_size",
        "model.num_attention_heads",
        "model.intermediate_size",
    )
    if not config.data.train_files:
        raise ConfigError(
            "config.data.train_files is empty; set it to a glob of text files "
            "(one sentence per line, blank line between documents) or tfds:NAME."
        )
    model, data = config.model, config.data
    if model.hidden_size % model.num_attention_heads:
        raise ConfigError(
            f"config.model.hidden_size ({model.hidden_size}) is not divisible by "
            f"config.model.num_attention_heads ({model.num_attention_heads}); pick sizes where "
            f"it is (e.g. 768 and 12)."
        )
    if data.max_seq_length > model.max_position_embeddings:
        raise ConfigError(
            f"config.data.max_seq_length ({data.max_seq_length}) exceeds "
            f"config.model.max_position_embeddings ({model.max_position_embeddings}); raise the "
            f"latter or shorten the sequences."
        )
    objective = data.get("objective", "nsp")
    if objective not in ("nsp", "packed"):
        raise ConfigError(f"config.data.objective must be 'nsp' or 'packed', got {objective!r}.")
    if model.get("arch", "bert") == "modernbert" and objective != "packed":
        raise ConfigError(
            "config.model.arch='modernbert' pretrains on packed rows without NSP: set "
            "config.data.objective='packed'."
        )
    expected = round(data.masked_lm_prob * data.max_seq_length)
    if expected > data.max_predictions_per_seq:
        raise ConfigError(
            f"config.data.max_predictions_per_seq={data.max_predictions_per_seq} caps masking "
            f"below config.data.masked_lm_prob={data.masked_lm_prob} ({expected} of "
            f"{data.max_seq_length} positions): raise it to at least {expected}."
        )
    if data.max_predictions_per_seq > data.max_seq_length - 3:
        raise ConfigError(
            f"config.data.max_predictions_per_seq ({data.max_predictions_per_seq}) cannot exceed "
            f"max_seq_length - 3 ({data.max_seq_length - 3}): [CLS] and two [SEP] are never "
            f"masked. Lower it (BERT: 20 at length 128, 80 at 512)."
        )


def check_finetuning(config: ml_collections.ConfigDict, tasks: Collection[str]) -> None:
    """A fine-tuning config: the common keys, the task, the head and where weights come from."""
    check_common(config)
    if config.task not in tasks:
        raise ConfigError(
            f"config.task={config.task!r} is not a fine-tuning task: use one of "
            f"{', '.join(sorted(tasks))}."
        )
    if not 0.0 <= config.classifier_dropout < 1.0:
        raise ConfigError(
            f"config.classifier_dropout={config.classifier_dropout} must be in [0, 1)."
        )
    peft = config.get("peft")
    if peft is not None:
        if peft.method not in ("none", "lora"):
            raise ConfigError(f"config.peft.method={peft.method!r}: use 'none' or 'lora'.")
        if peft.method == "lora":
            if peft.rank < 1 or peft.alpha < 0 or not 0.0 <= peft.dropout < 1.0:
                raise ConfigError(
                    f"config.peft: rank={peft.rank} must be >= 1, alpha={peft.alpha} >= 0 and "
                    f"dropout={peft.dropout} in [0, 1)."
                )
            if not config.init_from:
                raise ConfigError(
                    "config.peft.method='lora' freezes the encoder, so it needs config.init_from "
                    "(a pretrained encoder); use peft.method='none' for random init."
                )
    if not config.init_from and not config.data.tokenizer_model:
        raise ConfigError(
            "config.init_from is empty (random init), so config.data.tokenizer_model must name a "
            "sentencepiece .model; or set config.init_from to a pretraining workdir."
        )


def check_batch_layout(config: ml_collections.ConfigDict, data_parallel: int) -> None:
    """The global batch must split evenly over data-parallel devices and microbatches."""
    per_step = data_parallel * config.grad_accum_steps
    if config.global_batch_size % per_step:
        raise ConfigError(
            f"config.global_batch_size ({config.global_batch_size}) is not divisible by "
            f"data-parallel devices ({data_parallel}) x config.grad_accum_steps "
            f"({config.grad_accum_steps}) = {per_step}; use a multiple of {per_step}."
        )
    if config.eval_batch_size % data_parallel:
        raise ConfigError(
            f"config.eval_batch_size ({config.eval_batch_size}) is not divisible by the "
            f"{data_parallel} data-parallel devices; use a multiple of {data_parallel}."
        )
