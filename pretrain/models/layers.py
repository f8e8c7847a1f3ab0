"""Building blocks shared by the encoders: initializers with logical axes, dense and norm layers,
and BERT's multi-head self-attention (its mask rule and kernels: `models/attention.py`).

Every parameter is created through `param_init`, which records its logical axis names as Flax
NNX sharding metadata (`nnx.with_partitioning`); `pretrain/training/sharding.py` maps them to mesh
axes with the config's rules (`nnx.get_partition_spec` under `logical_axis_rules`). The names:

    vocab  embedding rows        embed  the residual width H   heads  attention heads N
    kv     per-head width D      mlp    the MLP width I        norm   LayerNorm scale and bias
    classes  task outputs

Shape letters: B batch, S sequence, H hidden (embed), N heads, D head dim, I intermediate.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.models import attention
from pretrain.models.config import EncoderConfig


def param_init(init: Callable, *axes: str | None) -> Callable:
    """`init` with the parameter's logical axis names as NNX sharding metadata.

    eager_sharding=False: parameters are placed by the jitted init's out_shardings (computed from
    this metadata and the config's rules), not at creation, so models build outside any mesh.
    """
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def truncated_normal(std: float, *axes: str | None) -> Callable:
    """Truncated normal at +-2 std (TF BERT's and Hugging Face ModernBERT's initializer)."""
    return param_init(jax.nn.initializers.truncated_normal(stddev=std), *axes)


def normal(cfg: EncoderConfig, *axes: str | None) -> Callable:
    """`truncated_normal` of `cfg.initializer_range`."""
    return truncated_normal(cfg.initializer_range, *axes)


def zeros(*axes: str | None) -> Callable:
    return param_init(jax.nn.initializers.zeros, *axes)


LORA = "lora"  # The attribute a LoRA adapter lives under (pretrain/models/lora.py).


def project(module: nnx.Module, x: jax.Array, *, deterministic: bool = True, rngs=None):
    """`module(x)` for a projection, plus its LoRA adapter's update when one is attached."""
    y = module(x)
    adapter = getattr(module, LORA, None)
    if adapter is None:
        return y
    return y + adapter(x, deterministic=deterministic, rngs=rngs).astype(y.dtype)


def dense(
    cfg: EncoderConfig,
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    rngs: nnx.Rngs,
    dtype: Any = None,
) -> nnx.Linear:
    """A Linear layer whose bias is labelled by its output axis."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=normal(cfg, *axes),
        bias_init=zeros(axes[1]),
        dtype=cfg.dtype if dtype is None else dtype,
        param_dtype=cfg.param_dtype,
        rngs=rngs,
    )


def layer_norm(cfg: EncoderConfig, rngs: nnx.Rngs, *, use_bias: bool = True) -> nnx.LayerNorm:
    """LayerNorm over H; computes (and returns) float32 whatever the compute dtype."""
    return nnx.LayerNorm(
        cfg.hidden_size,
        epsilon=cfg.layer_norm_eps,
        use_bias=use_bias,
        dtype=jnp.float32,
        param_dtype=cfg.param_dtype,
        scale_init=param_init(jax.nn.initializers.ones, "norm"),
        bias_init=zeros("norm"),
        rngs=rngs,
    )


def activation(cfg: EncoderConfig, x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=cfg.hidden_act == "gelu_tanh")


class SelfAttention(nnx.Module):
    """BERT's multi-head self-attention over the keys a mask allows, then the output projection."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        n, d = cfg.num_attention_heads, cfg.head_dim

        def qkv() -> nnx.LinearGeneral:
            return nnx.LinearGeneral(
                cfg.hidden_size,
                (n, d),
                kernel_init=normal(cfg, "embed", "heads", "kv"),  # [H, N, D]
                bias_init=zeros("heads", "kv"),  # [N, D]
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )

        self.query = qkv()
        self.key = qkv()
        self.value = qkv()
        self.output = nnx.LinearGeneral(
            (n, d),
            cfg.hidden_size,
            axis=(-2, -1),
            kernel_init=normal(cfg, "heads", "kv", "embed"),  # [N, D, H]
            bias_init=zeros("embed"),  # [H]
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob)

    def __call__(
        self, x: jax.Array, mask: attention.AttentionMask, *, deterministic: bool, rngs
    ) -> jax.Array:
        """x [B, S, H] -> [B, S, H]."""
        run = dict(deterministic=deterministic, rngs=rngs)
        q, k, v = (project(m, x, **run) for m in (self.query, self.key, self.value))  # [B,S,N,D]
        y = attention.attend(
            self.cfg, q, k, v, mask, self.dropout, deterministic=deterministic, rngs=rngs
        )
        return project(self.output, y, **run)  # [B, S, H]


REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole layer in the backward pass.
    # Save dense-layer outputs; recompute attention scores (batched matmuls), GELU, LayerNorm.
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


# How [B, S, H] activations between layers are sharded: set by the step builder while it traces
# (`training/steps.py`: the batch's sharding), None elsewhere. Without it, XLA may keep the whole
# batch on every chip and split H like the FSDP-sharded weights, then all-reduce activations.
_ACTIVATION_SHARDING: contextvars.ContextVar = contextvars.ContextVar(
    "activation_sharding", default=None
)


@contextlib.contextmanager
def activation_sharding(sharding: jax.sharding.Sharding | None) -> Iterator[None]:
    """Within the block, `apply_layers` constrains its activations to `sharding`, and the Pallas
    attention kernels run per shard of its mesh (`attention.kernel_mesh`)."""
    token = _ACTIVATION_SHARDING.set(sharding)
    try:
        with attention.kernel_mesh(getattr(sharding, "mesh", None)):
            yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def _constrain(x: jax.Array) -> jax.Array:
    sharding = _ACTIVATION_SHARDING.get()
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _apply_layer(layer: nnx.Module, x: jax.Array, aux: Any, deterministic: bool, rngs):
    return layer(x, aux, deterministic=deterministic, rngs=rngs)


def apply_layers(
    cfg: EncoderConfig, layers: nnx.List, x: jax.Array, aux: Any, *, deterministic: bool, rngs
) -> jax.Array:
    """x -> layer_L(... layer_1(x, aux) ...), rematerialized as `cfg.remat_policy` says.

    `aux` is whatever every layer reads besides x (a mask, rotary tables): a pytree of arrays.
    """
    apply = _apply_layer
    if cfg.remat_policy != "none":
        apply = nnx.remat(
            _apply_layer, policy=REMAT_POLICIES[cfg.remat_policy], static_argnums=(3,)
        )
    x = _constrain(x)
    for layer in layers:
        x = _constrain(apply(layer, x, aux, deterministic, rngs))  # [B, S, H]
    return x
