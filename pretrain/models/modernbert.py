"""A ModernBERT-class encoder in Flax NNX, weight-compatible with Hugging Face `ModernBertModel`.

What differs from BERT (Warner et al. 2024, "Smarter, Better, Faster, Longer"): token embeddings
with a LayerNorm and no position or token-type embeddings; pre-norm layers (the first layer's
attention norm is the embedding norm); no biases in attention, MLP or norms; rotary positions
(RoPE, `rotate_half` layout) with base `global_rope_theta` in global layers and `local_rope_theta`
in local ones; a GeGLU MLP; every `global_attn_every_n_layers`-th layer (0, n, 2n, ...) attends
globally, the others within a sliding window of `local_attention` tokens (|i - j| <= window / 2);
a final norm. Packed rows: attention never crosses a document boundary and positions restart at
each document (`document_ids`, `positions` inputs).

Layout differences with Hugging Face, converted in `pretrain/hf/`: the fused `Wqkv` is three
per-head projections (so tensor parallelism splits heads) and the fused `Wi` is its two halves,
input and gate. Parameters are float32; matmuls run in `cfg.dtype`; norms, softmax and rotary
angles in float32.

Shape letters: B batch, S sequence, H hidden, N heads, D head dim, I intermediate.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from data_pipeline.errors import ConfigError
from pretrain.models import attention, layers
from pretrain.models.config import EncoderConfig


def out_std(cfg: EncoderConfig) -> float:
    """Std of the projections into the residual stream: initializer_range / sqrt(2 L)."""
    return cfg.initializer_range / math.sqrt(2.0 * cfg.num_hidden_layers)


def rotary_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) [B, S, 1, D] float32 of RoPE at `positions` [B, S] with base `theta`."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, S, 1, D]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, table: tuple[jax.Array, jax.Array]) -> jax.Array:
    """x [B, S, N, D] rotated by (cos, sin), in float32, back in x's dtype."""
    cos, sin = table
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class ModernBertEmbeddings(nnx.Module):
    """Token embeddings, LayerNorm (no bias), dropout."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.tok_embeddings = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=layers.truncated_normal(cfg.initializer_range, "vocab", "embed"),
            dtype=jnp.float32,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
        )
        self.norm = layers.layer_norm(cfg, rngs, use_bias=False)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
        """[B, S] ids -> [B, S, H] in cfg.dtype."""
        x = self.norm(self.tok_embeddings(input_ids))
        return self.dropout(x, deterministic=deterministic, rngs=rngs).astype(self.cfg.dtype)


class ModernBertAttention(nnx.Module):
    """Self-attention with rotary q, k; global or sliding-window; no biases."""

    def __init__(self, cfg: EncoderConfig, is_global: bool, *, rngs: nnx.Rngs):
        self.cfg, self.is_global = cfg, is_global
        n, d, h = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size

        def projection() -> nnx.LinearGeneral:
            init = layers.truncated_normal(
                cfg.initializer_range, "embed", "heads", "kv"
            )  # [H, N, D]
            return nnx.LinearGeneral(
                h, (n, d), use_bias=False, kernel_init=init, dtype=cfg.dtype,
                param_dtype=cfg.param_dtype, rngs=rngs,
            )  # fmt: skip

        self.query, self.key, self.value = projection(), projection(), projection()
        self.output = nnx.LinearGeneral(
            (n, d), h, axis=(-2, -1), use_bias=False,
            kernel_init=layers.truncated_normal(out_std(cfg), "heads", "kv", "embed"),
            dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
        )  # fmt: skip
        self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob)

    def __call__(self, x: jax.Array, aux: dict[str, Any], *, deterministic: bool, rngs):
        """x [B, S, H] -> [B, S, H]; `aux` holds the mask parts and both rotary tables."""
        table = aux["rope_global"] if self.is_global else aux["rope_local"]
        run = dict(deterministic=deterministic, rngs=rngs)
        q = apply_rotary(layers.project(self.query, x, **run), table)  # [B, S, N, D]
        k = apply_rotary(layers.project(self.key, x, **run), table)
        window = None if self.is_global else self.cfg.local_attention // 2
        y = attention.attend(
            self.cfg, q, k, layers.project(self.value, x, **run), aux["mask"], self.dropout,
            deterministic=deterministic, rngs=rngs, window=window,
        )  # fmt: skip
        out = layers.project(self.output, y, **run)  # [B, S, H]
        return self.dropout(out, deterministic=deterministic, rngs=rngs)


class ModernBertMlp(nnx.Module):
    """GeGLU: Wo(gelu(x Wi_input) * (x Wi_gate)), no biases."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        h, i = cfg.hidden_size, cfg.intermediate_size

        def linear(n_in: int, n_out: int, std: float, axes) -> nnx.Linear:
            init = layers.truncated_normal(std, *axes)
            return nnx.Linear(
                n_in, n_out, use_bias=False, kernel_init=init, dtype=cfg.dtype,
                param_dtype=cfg.param_dtype, rngs=rngs,
            )  # fmt: skip

        self.wi_input = linear(h, i, cfg.initializer_range, ("embed", "mlp"))
        self.wi_gate = linear(h, i, cfg.initializer_range, ("embed", "mlp"))
        self.wo = linear(i, h, out_std(cfg), ("mlp", "embed"))
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
        run = dict(deterministic=deterministic, rngs=rngs)
        gate = layers.project(self.wi_gate, x, **run)
        h = layers.activation(self.cfg, layers.project(self.wi_input, x, **run)) * gate  # [B,S,I]
        return layers.project(self.wo, self.dropout(h, **run), **run)  # [B, S, H]


class ModernBertLayer(nnx.Module):
    """Pre-norm: x += Attn(LN(x)); x += MLP(LN(x)). Layer 0 has no attention norm."""

    def __init__(self, cfg: EncoderConfig, index: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attn_norm = layers.layer_norm(cfg, rngs, use_bias=False) if index > 0 else None
        self.attention = ModernBertAttention(
            cfg, index % cfg.global_attn_every_n_layers == 0, rngs=rngs
        )
        self.mlp_norm = layers.layer_norm(cfg, rngs, use_bias=False)
        self.mlp = ModernBertMlp(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, aux: dict, *, deterministic: bool, rngs) -> jax.Array:
        """x [B, S, H] -> [B, S, H]; the residual stream is summed in float32."""
        dtype = self.cfg.dtype
        h = x if self.attn_norm is None else self.attn_norm(x).astype(dtype)
        x = x.astype(jnp.float32) + self.attention(h, aux, deterministic=deterministic, rngs=rngs)
        h = self.mlp(self.mlp_norm(x).astype(dtype), deterministic=deterministic, rngs=rngs)
        return (x + h).astype(dtype)


class ModernBertEncoder(nnx.Module):
    """Embeddings, layers and the final norm: the body of every ModernBERT task model."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = ModernBertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List(
            [ModernBertLayer(cfg, i, rngs=rngs) for i in range(cfg.num_hidden_layers)]
        )
        self.final_norm = layers.layer_norm(cfg, rngs, use_bias=False)

    def __call__(
        self,
        input_ids: jax.Array,
        input_mask: jax.Array,
        segment_ids: jax.Array,
        *,
        document_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        """[B, S] ids and mask (1 = real token) -> [B, S, H] in cfg.dtype. `segment_ids` (BERT's
        token types) are not used; packed rows pass `document_ids` and `positions`."""
        del segment_ids
        seq_len = input_ids.shape[1]
        if seq_len > self.cfg.max_position_embeddings:
            raise ConfigError(
                f"Sequence length {seq_len} exceeds model.max_position_embeddings="
                f"{self.cfg.max_position_embeddings}: lower data.max_seq_length or raise it."
            )
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq_len), input_ids.shape)
        d = self.cfg.head_dim
        aux = {
            "mask": attention.AttentionMask(input_mask, document_ids),
            "rope_global": rotary_tables(positions, d, self.cfg.global_rope_theta),
            "rope_local": rotary_tables(positions, d, self.cfg.local_rope_theta),
        }
        x = self.embeddings(input_ids, deterministic=deterministic, rngs=rngs)
        x = layers.apply_layers(
            self.cfg, self.layers, x, aux, deterministic=deterministic, rngs=rngs
        )
        return self.final_norm(x).astype(self.cfg.dtype)

    @property
    def word_embeddings(self) -> jax.Array:
        """[V, H]: the table the MLM decoder is tied to."""
        return self.embeddings.tok_embeddings.embedding[...]

    def pool(self, x: jax.Array, input_mask: jax.Array) -> jax.Array:
        """[B, S, H] -> [B, H]: the [CLS] vector or the mean of the real tokens
        (`classifier_pooling`, as Hugging Face's); the task model's head follows."""
        if self.cfg.classifier_pooling == "cls":
            return x[:, 0]
        weights = input_mask.astype(jnp.float32)[..., None]  # [B, S, 1]
        total = (x.astype(jnp.float32) * weights).sum(axis=1)
        return (total / jnp.maximum(weights.sum(axis=1), 1.0)).astype(x.dtype)
