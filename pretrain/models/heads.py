"""Task models: an encoder with the heads a task trains, each configured by its constructor.

* `PreTrainingModel`: masked-LM head (tied decoder) and, for NSP pretraining, the
  next-sentence head;
* `SequenceClassifier`: pooled output (ModernBERT: then its prediction head) -> dropout -> linear
  layer (num_outputs = labels, or 1 for regression);
* `TokenClassifier`: every position's output (ModernBERT: then its prediction head) -> dropout ->
  linear layer: tags per token (num_outputs = labels) or QA's start and end logits (2).

The encoder is always the `encoder` attribute, so every task's parameters hold the same
`encoder/...` subtree: fine-tuning restores it from a pretraining checkpoint by that name.
Every returned logit is float32.

Shape letters: B batch, S sequence, P masked positions, H hidden, V vocabulary, C outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.models import layers, modernbert
from pretrain.models.bert import BertEncoder
from pretrain.models.config import EncoderConfig

ENCODERS = {"bert": BertEncoder, "modernbert": modernbert.ModernBertEncoder}


def make_encoder(cfg: EncoderConfig, rngs: nnx.Rngs) -> nnx.Module:
    return ENCODERS[cfg.arch](cfg, rngs=rngs)


def linear_head(cfg: EncoderConfig, num_outputs: int, rngs: nnx.Rngs) -> nnx.Linear:
    """[H] -> [C]; a tiny matmul, computed in float32. Initialized as each architecture's
    reference does: BERT's truncated normal, ModernBERT's H^-0.5 ("final_out")."""
    h = cfg.hidden_size
    std = cfg.initializer_range if cfg.arch == "bert" else h**-0.5
    return nnx.Linear(
        h, num_outputs,
        kernel_init=layers.truncated_normal(std, "embed", "classes"),
        bias_init=layers.zeros("classes"), dtype=jnp.float32, param_dtype=cfg.param_dtype,
        rngs=rngs,
    )  # fmt: skip


class PredictionHead(nnx.Module):
    """dense -> activation -> LayerNorm over H: BERT's MLM transform (with biases) and
    ModernBERT's `head` (no biases), before its decoder or classifier."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        h, bias = cfg.hidden_size, cfg.arch == "bert"
        std = cfg.initializer_range if bias else modernbert.out_std(cfg)
        self.transform = nnx.Linear(
            h, h, use_bias=bias, kernel_init=layers.truncated_normal(std, "embed", "embed"),
            bias_init=layers.zeros("embed"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            rngs=rngs,
        )  # fmt: skip
        self.layer_norm = layers.layer_norm(cfg, rngs, use_bias=bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., H] -> [..., H] in cfg.dtype (the norm in float32)."""
        return self.layer_norm(layers.activation(self.cfg, self.transform(x))).astype(
            self.cfg.dtype
        )


class MlmHead(nnx.Module):
    """The prediction head, then the decoder tied to the word embeddings plus a bias."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.head = PredictionHead(cfg, rngs=rngs)
        self.bias = nnx.Param(
            layers.zeros("vocab")(rngs.params(), (cfg.vocab_size,), cfg.param_dtype)
        )

    def __call__(self, x: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        """x [B, P, H], word_embeddings [V, H] -> logits [B, P, V] float32."""
        h = self.head(x)
        logits = jnp.einsum(
            "bph,vh->bpv",
            h,
            word_embeddings.astype(self.cfg.dtype),
            preferred_element_type=jnp.float32,
        )
        return logits + self.bias[...].astype(jnp.float32)


class PreTrainingModel(nnx.Module):
    """The encoder with the masked-LM head and, for NSP pretraining, the next-sentence head."""

    def __init__(self, cfg: EncoderConfig, *, with_nsp: bool = True, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = make_encoder(cfg, rngs)
        self.mlm_head = MlmHead(cfg, rngs=rngs)
        self.nsp_head = linear_head(cfg, 2, rngs) if with_nsp else None

    def __call__(
        self,
        input_ids: jax.Array,
        input_mask: jax.Array,
        segment_ids: jax.Array,
        masked_lm_positions: jax.Array,
        *,
        document_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """[B, S] ids/mask/segments, [B, P] positions -> (mlm [B, P, V], nsp [B, 2] or None),
        float32. Packed rows pass `document_ids` and `positions` [B, S].

        `rngs` needs a 'dropout' stream when deterministic=False.
        """
        check_rngs(self.cfg, deterministic, rngs)
        x = self.encoder(
            input_ids,
            input_mask,
            segment_ids,
            document_ids=document_ids,
            positions=positions,
            deterministic=deterministic,
            rngs=rngs,
        )  # fmt: skip  [B, S, H]
        nsp_logits = None
        if self.nsp_head is not None:
            nsp_logits = self.nsp_head(self.encoder.pool(x, input_mask))  # [B, 2]
        # Project only the P masked positions to the vocabulary, not all S.
        x = jnp.take_along_axis(x, masked_lm_positions[..., None], axis=1)  # [B, P, H]
        mlm_logits = self.mlm_head(x, self.encoder.word_embeddings)  # [B, P, V]
        return mlm_logits, nsp_logits


class _Classifier(nnx.Module):
    """Encoder, then (ModernBERT) its prediction head, dropout and a linear layer: the layout of
    Hugging Face's task classes, so parameter paths match theirs."""

    def __init__(
        self, cfg: EncoderConfig, num_outputs: int, *, dropout_rate: float, rngs: nnx.Rngs
    ):
        if num_outputs < 1:
            raise ValueError(f"num_outputs={num_outputs} must be positive.")
        self.cfg = cfg
        self.encoder = make_encoder(cfg, rngs)
        self.head = PredictionHead(cfg, rngs=rngs) if cfg.arch == "modernbert" else None
        self.dropout = nnx.Dropout(dropout_rate)
        self.classifier = linear_head(cfg, num_outputs, rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        input_mask: jax.Array,
        segment_ids: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """[B, S] ids/mask/segments -> logits float32, [B, C] or [B, S, C] (see `_reduce`)."""
        check_rngs(self.cfg, deterministic, rngs, self.dropout.rate > 0)
        x = self.encoder(input_ids, input_mask, segment_ids, deterministic=deterministic, rngs=rngs)
        x = self._reduce(x, input_mask)  # [B, H] or [B, S, H]
        if self.head is not None:
            x = self.head(x)
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return self.classifier(x)

    def on_batch(self, batch: Mapping[str, jax.Array], rngs: nnx.Rngs | None) -> jax.Array:
        """The logits of a task batch; `rngs` None means deterministic (eval)."""
        return self(batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                    deterministic=rngs is None, rngs=rngs)  # fmt: skip

    def _reduce(self, x: jax.Array, input_mask: jax.Array) -> jax.Array:
        raise NotImplementedError


class SequenceClassifier(_Classifier):
    """Logits (or a score) per sequence from the pooled output, as Hugging Face's
    `*ForSequenceClassification`. num_outputs: the number of classes (>= 2), or 1 for a
    regression score."""

    def _reduce(self, x: jax.Array, input_mask: jax.Array) -> jax.Array:
        return self.encoder.pool(x, input_mask)  # [B, S, H] -> [B, H]


class TokenClassifier(_Classifier):
    """Logits per token, as Hugging Face's `*ForTokenClassification` (and, with 2 outputs and no
    dropout for BERT, `*ForQuestionAnswering`)."""

    def _reduce(self, x: jax.Array, input_mask: jax.Array) -> jax.Array:
        return x  # Every position is classified.


def check_rngs(
    cfg: EncoderConfig, deterministic: bool, rngs: nnx.Rngs | None, head_dropout: bool = False
) -> None:
    if not deterministic and (cfg.uses_dropout or head_dropout) and rngs is None:
        raise ValueError(
            "deterministic=False needs rngs with a dropout stream: pass rngs=nnx.Rngs(dropout=key)."
        )


POOLING = ("mean", "cls", "last")


def pool_tokens(x: jax.Array, input_mask: jax.Array, pooling: str) -> jax.Array:
    """[B, S, H] -> [B, H] float32: the mean of the real tokens, the first ([CLS]) or the last
    real one, as sentence-transformers' `Pooling` modes mean / cls / lasttoken compute them."""
    x = x.astype(jnp.float32)
    if pooling == "cls":
        return x[:, 0]
    if pooling == "last":
        last = jnp.maximum(input_mask.sum(axis=1) - 1, 0)  # Right padding: the last real token.
        return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    weights = input_mask.astype(jnp.float32)[..., None]  # [B, S, 1]
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)


class SentenceEmbedder(nnx.Module):
    """The encoder, pooled and L2-normalized: one embedding per text (retrieval). With
    `learn_temperature`, `log_scale` holds the contrastive loss's learned log(1 / temperature).
    Parameter paths are the encoder's, so the export is the plain `*Model` class."""

    def __init__(self, cfg: EncoderConfig, *, pooling: str, temperature: float,
                 learn_temperature: bool, rngs: nnx.Rngs):  # fmt: skip
        if pooling not in POOLING:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLING}.")
        self.cfg, self.pooling = cfg, pooling
        self.encoder = make_encoder(cfg, rngs)
        self.log_scale = (
            nnx.Param(jnp.asarray(-jnp.log(temperature), jnp.float32))
            if learn_temperature
            else None
        )

    def __call__(self, input_ids: jax.Array, input_mask: jax.Array, *, deterministic: bool,
                 rngs: nnx.Rngs | None = None) -> jax.Array:  # fmt: skip
        """[..., S] ids and mask -> [..., H] float32 unit vectors (any leading dims)."""
        check_rngs(self.cfg, deterministic, rngs)
        lead, s = input_ids.shape[:-1], input_ids.shape[-1]
        ids, mask = input_ids.reshape(-1, s), input_mask.reshape(-1, s)
        x = self.encoder(ids, mask, jnp.zeros_like(ids), deterministic=deterministic, rngs=rngs)
        e = pool_tokens(x, mask, self.pooling)
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)  # F.normalize's eps.
        return e.reshape(*lead, e.shape[-1])
