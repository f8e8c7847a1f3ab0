"""Building blocks shared by the encoders: initializers with logical axes, dense and norm layers,
and multi-head attention over a mask.

Every parameter is created through `param_init`, which records its logical axis names as Flax
NNX sharding metadata (`nnx.with_partitioning`); `pretrain/training/sharding.py` maps them to mesh
axes with the config's rules (`nnx.get_partition_spec` under `logical_axis_rules`). The names:

    vocab  embedding rows        embed  the residual width H   heads  attention heads N
    kv     per-head width D      mlp    the MLP width I        norm   LayerNorm scale and bias
    classes  task outputs

Shape letters: B batch, S sequence, H hidden (embed), N heads, D head dim, I intermediate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query may attend to: real tokens, of the same document (packed rows).

    A sliding window, when a layer has one, is added by `allowed`.
    """

    input_mask: jax.Array  # [B, S] int: 1 for real tokens, 0 for padding.
    document_ids: jax.Array | None = None  # [B, S] int: packed rows' document of each token.

    def allowed(self, window: int | None = None) -> jax.Array:
        """bool [B, 1, 1, S] (padding only) or [B, 1, S, S]: key j is visible from query i."""
        keys = self.input_mask.astype(jnp.bool_)[:, None, None, :]  # [B, 1, 1, S]
        if self.document_ids is None and window is None:
            return keys
        seq = self.input_mask.shape[1]
        allowed = jnp.broadcast_to(keys, (keys.shape[0], 1, seq, seq))
        if self.document_ids is not None:
            docs = self.document_ids
            allowed = allowed & (docs[:, None, :, None] == docs[:, None, None, :])
        if window is not None:
            offset = jnp.arange(seq)[:, None] - jnp.arange(seq)[None, :]
            allowed = allowed & (jnp.abs(offset) <= window)[None, None]
        return allowed


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
        self, x: jax.Array, mask: AttentionMask, *, deterministic: bool, rngs
    ) -> jax.Array:
        """x [B, S, H] -> [B, S, H]."""
        run = dict(deterministic=deterministic, rngs=rngs)
        q, k, v = (project(m, x, **run) for m in (self.query, self.key, self.value))  # [B,S,N,D]
        y = attend(self.cfg, q, k, v, mask, self.dropout, deterministic=deterministic, rngs=rngs)
        return project(self.output, y, **run)  # [B, S, H]


def attend(
    cfg: EncoderConfig,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    dropout: nnx.Dropout,
    *,
    deterministic: bool,
    rngs,
    window: int | None = None,
) -> jax.Array:
    """Softmax(q k^T / sqrt(D)) v over the keys `mask` allows: [B, S, N, D] -> [B, S, N, D].

    `cfg.attention_impl` picks the kernel; with attention dropout active only the einsum path
    can apply it, so it runs whatever the setting. cuDNN: padding alone is given as sequence
    lengths (its fused flash kernel); documents of packed rows and sliding windows as a dense
    mask, which cuDNN applies as a bias (jax's cuDNN call has no bidirectional window).
    """
    dropout_active = not deterministic and cfg.attention_probs_dropout_prob > 0
    if cfg.attention_impl == "einsum" or dropout_active:
        return _einsum_attention(cfg, q, k, v, mask.allowed(window), dropout, deterministic, rngs)
    if cfg.attention_impl == "cudnn" and mask.document_ids is None and window is None:
        # BERT padding is a suffix. A fully padded row (eval padding) keeps one key so its
        # output stays finite.
        lengths = jnp.maximum(jnp.sum(mask.input_mask, axis=-1, dtype=jnp.int32), 1)  # [B]
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
        )
    # The XLA path computes scores in float32 and the softmax in float32 for bf16 inputs.
    implementation = "cudnn" if cfg.attention_impl == "cudnn" else "xla"
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask.allowed(window), implementation=implementation
    )


def _einsum_attention(cfg, q, k, v, allowed, dropout, deterministic, rngs) -> jax.Array:
    """Reference attention with the softmax in float32 and dropout on the probabilities."""
    scores = jnp.einsum("btnd,bsnd->bnts", q, k, preferred_element_type=jnp.float32)
    scores *= 1.0 / np.sqrt(cfg.head_dim)  # [B, N, S, S]
    # A large finite negative (not -inf) keeps fully padded rows finite (uniform weights).
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = dropout(probs, deterministic=deterministic, rngs=rngs)
    return jnp.einsum("bnts,bsnd->btnd", probs.astype(cfg.dtype), v)  # [B, S, N, D]


REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole layer in the backward pass.
    # Save dense-layer outputs; recompute attention scores (batched matmuls), GELU, LayerNorm.
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


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
    for layer in layers:
        x = apply(layer, x, aux, deterministic, rngs)  # [B, S, H]
    return x
