"""The original BERT encoder in Flax NNX (Devlin et al. 2019), weight-compatible with Hugging Face.

Post-LN layers, learned positions, token-type embeddings, GELU, and the [CLS] pooler that the
next-sentence head and sequence classifiers read. Numerically equivalent to the `bert` part of
Hugging Face `BertForPreTraining`. Parameters are float32; matmuls run in `cfg.dtype`; LayerNorm,
softmax and residual sums are float32. Heads live in `pretrain/models/heads.py`.

Shape letters: B batch, S sequence, H hidden (embed), N heads, D head dim, I intermediate (mlp).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from data_pipeline.errors import ConfigError
from pretrain.models import attention, layers
from pretrain.models.config import EncoderConfig


class BertEmbeddings(nnx.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg

        def table(n: int, axes: tuple[str | None, str]) -> nnx.Embed:
            # Summed in float32 (like the LayerNorm that follows); cast to cfg.dtype after.
            return nnx.Embed(
                n,
                cfg.hidden_size,
                embedding_init=layers.normal(cfg, *axes),
                dtype=jnp.float32,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )

        self.word_embeddings = table(cfg.vocab_size, ("vocab", "embed"))
        self.position_embeddings = table(cfg.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = table(cfg.type_vocab_size, (None, "embed"))
        self.layer_norm = layers.layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array | None,
        *,
        deterministic: bool,
        rngs,
    ) -> jax.Array:
        """[B, S] token and segment ids (and positions; default 0..S-1) -> [B, S, H]."""
        seq_len = input_ids.shape[1]
        if seq_len > self.cfg.max_position_embeddings:
            raise ConfigError(
                f"Sequence length {seq_len} exceeds model.max_position_embeddings="
                f"{self.cfg.max_position_embeddings}: lower data.max_seq_length or raise it."
            )
        x = self.word_embeddings(input_ids)  # [B, S, H]
        if positions is None:
            x += self.position_embeddings(jnp.arange(seq_len))[None]  # [1, S, H]
        else:
            x += self.position_embeddings(positions)  # [B, S, H]: packed rows restart them.
        x += self.token_type_embeddings(segment_ids)  # [B, S, H]
        x = self.layer_norm(x)
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return x.astype(self.cfg.dtype)


class BertLayer(nnx.Module):
    """Post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.attention = layers.SelfAttention(cfg, rngs=rngs)
        self.attention_norm = layers.layer_norm(cfg, rngs)
        self.mlp_in = layers.dense(cfg, h, i, ("embed", "mlp"), rngs=rngs)
        self.mlp_out = layers.dense(cfg, i, h, ("mlp", "embed"), rngs=rngs)
        self.mlp_norm = layers.layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self, x: jax.Array, mask: attention.AttentionMask, *, deterministic: bool, rngs
    ) -> jax.Array:
        """x [B, S, H] -> [B, S, H]."""
        h = self.attention(x, mask, deterministic=deterministic, rngs=rngs)  # [B, S, H]
        h = self.dropout(h, deterministic=deterministic, rngs=rngs)
        # Residual sum and LayerNorm in float32, stream back in the compute dtype.
        x = self.attention_norm(x.astype(jnp.float32) + h).astype(self.cfg.dtype)
        run = dict(deterministic=deterministic, rngs=rngs)
        h = layers.activation(self.cfg, layers.project(self.mlp_in, x, **run))  # [B, S, I]
        h = self.dropout(layers.project(self.mlp_out, h, **run), **run)  # [B, S, H]
        return self.mlp_norm(x.astype(jnp.float32) + h).astype(self.cfg.dtype)


class BertEncoder(nnx.Module):
    """Embeddings, the layers, and the [CLS] pooler; the body of every BERT task model."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        h = cfg.hidden_size
        self.pooler = layers.dense(cfg, h, h, ("embed", "embed"), rngs=rngs)

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
        """[B, S] ids, mask (1 = real token) and segments -> sequence output [B, S, H].

        Packed rows pass `document_ids` (attention stays within a document) and `positions`.
        """
        x = self.embeddings(
            input_ids, segment_ids, positions, deterministic=deterministic, rngs=rngs
        )
        mask = attention.AttentionMask(input_mask, document_ids)
        return layers.apply_layers(
            self.cfg, self.layers, x, mask, deterministic=deterministic, rngs=rngs
        )

    @property
    def word_embeddings(self) -> jax.Array:
        """[V, H]: the table the MLM decoder is tied to."""
        return self.embeddings.word_embeddings.embedding[...]

    def pool(self, x: jax.Array, input_mask: jax.Array) -> jax.Array:
        """BERT's pooled output: tanh(dense(x[:, 0])), [B, S, H] -> [B, H]."""
        del input_mask  # The [CLS] position is always real.
        return jnp.tanh(self.pooler(x[:, 0]))
