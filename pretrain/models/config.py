"""The architecture and numerics of an encoder: one dataclass, the one list of its shape fields.

`EncoderConfig` is built from a run's `config.model` (`from_config`) and validated on
construction; a bad value is a `ConfigError` naming the `model.*` key. `ARCHITECTURE_FIELDS` are
the fields that fix the parameters' shapes and meaning: a checkpoint records them, fine-tuning
takes them from the checkpoint it starts from, and the Hugging Face converters read them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from data_pipeline.errors import ConfigError

ARCHS = ("bert", "modernbert")
HIDDEN_ACTS = ("gelu", "gelu_tanh")
POOLINGS = ("cls", "mean")
ATTENTION_IMPLS = ("xla", "cudnn", "einsum", "splash", "pallas_gpu")
REMAT_POLICIES = ("none", "full", "dots")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")

# Fields that fix the parameters' shapes or what they compute. Everything else (dropout, dtypes,
# attention kernel, remat) may differ between pretraining and fine-tuning.
ARCHITECTURE_FIELDS = (
    "arch",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "hidden_act",
    "layer_norm_eps",
    "global_attn_every_n_layers",
    "local_attention",
    "global_rope_theta",
    "local_rope_theta",
)
# Integer fields that must be positive.
_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "global_attn_every_n_layers",
    "local_attention",
    "splash_block_q",
    "splash_block_kv",
)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture and numerics of an encoder (defaults: BERT-base)."""

    arch: str = "bert"  # 'bert' (models/bert.py) | 'modernbert' (models/modernbert.py).
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # 'gelu' (exact erf, original BERT) | 'gelu_tanh'.
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # ModernBERT only: every n-th layer (0, n, ...) attends globally, the others within a window of
    # local_attention tokens; rotary bases of the global and the local layers.
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    classifier_pooling: str = "cls"  # ModernBERT classifiers: 'cls' | 'mean' over real tokens.
    dtype: Any = jnp.float32  # Compute dtype of matmuls and activations.
    param_dtype: Any = jnp.float32  # Storage dtype of parameters.
    # 'xla' and 'cudnn' call jax.nn.dot_product_attention, which has no dropout: while attention
    # dropout is active (rate > 0, deterministic=False) 'xla' runs the 'einsum' path (the same math
    # plus dropout), and 'cudnn' requires attention_probs_dropout_prob == 0 (checked below).
    # 'cudnn' masks padding by sequence length, so input_mask must be 1s followed by 0s.
    # 'splash' (TPU Splash) and 'pallas_gpu' (GPU Triton flash) run in Pallas interpret mode on
    # other platforms; models/attention.py says which masks each path takes. Splash's query / key
    # block sizes are clamped to the sequence length, which they must divide.
    attention_impl: str = "xla"
    splash_block_q: int = 512
    splash_block_kv: int = 512
    remat_policy: str = "none"  # 'none' | 'full' | 'dots' (keep matmul outputs, recompute rest).

    def __post_init__(self):
        # Normalize dtypes so configs built from strings or jnp scalar types compare equal.
        for name in ("dtype", "param_dtype"):
            try:
                object.__setattr__(self, name, jnp.dtype(getattr(self, name)))
            except TypeError:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is not a dtype: use one of "
                    f"{', '.join(COMPUTE_DTYPES)}."
                ) from None
        for name in _SIZES:
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name}={value!r} must be a positive integer.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}: pick a head count that "
                "divides hidden_size."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be in [0, 1).")
        if self.initializer_range <= 0 or self.layer_norm_eps <= 0:
            raise ConfigError("model.initializer_range and model.layer_norm_eps must be positive.")
        _check_choice("model.arch", self.arch, ARCHS)
        _check_choice("model.classifier_pooling", self.classifier_pooling, POOLINGS)
        if self.local_attention % 2 or min(self.global_rope_theta, self.local_rope_theta) <= 0:
            raise ConfigError(
                f"model.local_attention={self.local_attention} must be even (a window of half "
                "that on each side) and the rope thetas positive."
            )
        _check_choice("model.hidden_act", self.hidden_act, HIDDEN_ACTS)
        _check_choice("model.attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice("model.remat_policy", self.remat_policy, REMAT_POLICIES)
        _check_choice("dtype", self.dtype.name, COMPUTE_DTYPES)
        _check_choice("param_dtype", self.param_dtype.name, COMPUTE_DTYPES)
        if self.splash_block_q % 128 or self.splash_block_kv % 128:
            raise ConfigError(
                f"model.splash_block_q={self.splash_block_q} and model.splash_block_kv="
                f"{self.splash_block_kv} must be multiples of 128 (the TPU's lane width)."
            )
        if self.attention_impl == "cudnn" and self.attention_probs_dropout_prob > 0:
            raise ConfigError(
                "model.attention_impl='cudnn' has no attention dropout: set "
                "model.attention_probs_dropout_prob=0 or use model.attention_impl='xla'."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def uses_dropout(self) -> bool:
        return self.hidden_dropout_prob > 0 or self.attention_probs_dropout_prob > 0

    def architecture(self) -> dict[str, Any]:
        """The ARCHITECTURE_FIELDS of this config, as saved with checkpoints."""
        return {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}

    @classmethod
    def from_config(cls, model_cfg: Any, vocab_size: int, dtype: str) -> EncoderConfig:
        """Builds the config from `config.model` (unset None fields keep the defaults), the
        tokenizer's size and `config.dtype`."""
        names = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "dtype"}
        kwargs = {k: model_cfg[k] for k in names if k in model_cfg and model_cfg[k] is not None}
        return cls(**kwargs, vocab_size=vocab_size, dtype=dtype)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not supported: use one of {', '.join(choices)}.")
