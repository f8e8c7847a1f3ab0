"""BERT in Flax NNX: config, encoder, pretraining heads and a sequence classifier.

Numerically equivalent to Hugging Face `BertForPreTraining` (post-LN, learned positions, token
types, GELU, tied MLM decoder). Parameters are float32; matmuls run in `BertConfig.dtype`;
LayerNorm, softmax and every returned logit are float32. Each parameter carries its logical axis
names as `logical_axes` metadata; `pretrain/sharding.py` maps them to mesh axes.

Shape letters: B batch, S sequence, P masked positions, H hidden (embed), N heads, D head dim,
I intermediate (mlp), V vocabulary, L labels.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

HIDDEN_ACTS = ("gelu", "gelu_tanh")
ATTENTION_IMPLS = ("xla", "cudnn", "einsum")
REMAT_POLICIES = ("none", "full", "dots")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture and numerics of a BERT encoder (defaults: BERT-base)."""

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
    dtype: Any = jnp.float32  # Compute dtype of matmuls and activations.
    param_dtype: Any = jnp.float32  # Storage dtype of parameters.
    # 'xla' and 'cudnn' call jax.nn.dot_product_attention, which has no dropout: while attention
    # dropout is active (rate > 0, deterministic=False) 'xla' runs the 'einsum' path (the same math
    # plus dropout), and 'cudnn' requires attention_probs_dropout_prob == 0 (checked below).
    # 'cudnn' masks padding by sequence length, so input_mask must be 1s followed by 0s.
    attention_impl: str = "xla"
    remat_policy: str = "none"  # 'none' | 'full' | 'dots' (keep matmul outputs, recompute rest).

    def __post_init__(self):
        # Normalize dtypes so configs built from strings or jnp scalar types compare equal.
        for name in ("dtype", "param_dtype"):
            try:
                object.__setattr__(self, name, jnp.dtype(getattr(self, name)))
            except TypeError:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not a dtype: use one of "
                    f"{', '.join(COMPUTE_DTYPES)}."
                ) from None
        sizes = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        )
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"model.{name}={value!r} must be a positive integer.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}: pick a head count that "
                "divides hidden_size."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be in [0, 1).")
        if self.initializer_range <= 0 or self.layer_norm_eps <= 0:
            raise ValueError("model.initializer_range and model.layer_norm_eps must be positive.")
        _check_choice("model.hidden_act", self.hidden_act, HIDDEN_ACTS)
        _check_choice("model.attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice("model.remat_policy", self.remat_policy, REMAT_POLICIES)
        _check_choice("dtype", self.dtype.name, COMPUTE_DTYPES)
        _check_choice("param_dtype", self.param_dtype.name, COMPUTE_DTYPES)
        if self.attention_impl == "cudnn" and self.attention_probs_dropout_prob > 0:
            raise ValueError(
                "model.attention_impl='cudnn' has no attention dropout: set "
                "model.attention_probs_dropout_prob=0 or use model.attention_impl='xla'."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_config(
        cls, model_cfg: ml_collections.ConfigDict, vocab_size: int, dtype: str
    ) -> "BertConfig":
        """Builds the config from `config.model`, the tokenizer's size and `config.dtype`."""
        names = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "dtype"}
        kwargs = {k: model_cfg[k] for k in names if k in model_cfg}
        return cls(**kwargs, vocab_size=vocab_size, dtype=dtype)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not supported: use one of {', '.join(choices)}.")


# ------------------------------------------------------------------------------------------------
# Initializers: truncated normal (+-2 std, as TF BERT) for kernels and tables, zeros for biases,
# ones for LayerNorm scales. Every one records the logical axis names of the parameter it makes.


def _normal(cfg: BertConfig, *axes: str | None) -> Callable:
    init = jax.nn.initializers.truncated_normal(stddev=cfg.initializer_range)
    return nnx.with_metadata(init, logical_axes=axes)


def _zeros(*axes: str | None) -> Callable:
    return nnx.with_metadata(jax.nn.initializers.zeros, logical_axes=axes)


def _dense(
    cfg: BertConfig,
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    bias_axis: str | None,
    rngs: nnx.Rngs,
    dtype: Any = None,
) -> nnx.Linear:
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=_normal(cfg, *axes),
        bias_init=_zeros(bias_axis),
        dtype=cfg.dtype if dtype is None else dtype,
        param_dtype=cfg.param_dtype,
        rngs=rngs,
    )


def _layer_norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Computes (and returns) float32 whatever the compute dtype; callers cast back.
    return nnx.LayerNorm(
        cfg.hidden_size,
        epsilon=cfg.layer_norm_eps,
        dtype=jnp.float32,
        param_dtype=cfg.param_dtype,
        scale_init=nnx.with_metadata(jax.nn.initializers.ones, logical_axes=("norm",)),
        bias_init=_zeros("norm"),
        rngs=rngs,
    )


def _activation(cfg: BertConfig, x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=cfg.hidden_act == "gelu_tanh")


# ------------------------------------------------------------------------------------------------
# Encoder


class BertEmbeddings(nnx.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg

        def table(n: int, axes: tuple[str | None, str]) -> nnx.Embed:
            # Summed in float32 (like the LayerNorm that follows); cast to cfg.dtype after.
            return nnx.Embed(
                n,
                cfg.hidden_size,
                embedding_init=_normal(cfg, *axes),
                dtype=jnp.float32,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )

        self.word_embeddings = table(cfg.vocab_size, ("vocab", "embed"))
        self.position_embeddings = table(cfg.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = table(cfg.type_vocab_size, (None, "embed"))
        self.layer_norm = _layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self, input_ids: jax.Array, segment_ids: jax.Array, *, deterministic: bool, rngs
    ) -> jax.Array:
        """[B, S] token and segment ids -> [B, S, H] in cfg.dtype."""
        seq_len = input_ids.shape[1]
        if seq_len > self.cfg.max_position_embeddings:
            raise ValueError(
                f"Sequence length {seq_len} exceeds model.max_position_embeddings="
                f"{self.cfg.max_position_embeddings}: lower data.max_seq_length or raise it."
            )
        x = self.word_embeddings(input_ids)  # [B, S, H]
        x += self.position_embeddings(jnp.arange(seq_len))[None]  # [1, S, H]
        x += self.token_type_embeddings(segment_ids)  # [B, S, H]
        x = self.layer_norm(x)
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return x.astype(self.cfg.dtype)


class BertSelfAttention(nnx.Module):
    """Multi-head self-attention over non-padding keys, followed by the output projection."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        n, d = cfg.num_attention_heads, cfg.head_dim

        def qkv() -> nnx.LinearGeneral:
            return nnx.LinearGeneral(
                cfg.hidden_size,
                (n, d),
                kernel_init=_normal(cfg, "embed", "heads", "kv"),  # [H, N, D]
                bias_init=_zeros("heads", "kv"),  # [N, D]
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
            kernel_init=_normal(cfg, "heads", "kv", "embed"),  # [N, D, H]
            bias_init=_zeros("norm"),  # [H]
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob)

    def __call__(
        self, x: jax.Array, input_mask: jax.Array, *, deterministic: bool, rngs
    ) -> jax.Array:
        """x [B, S, H], input_mask [B, S] (1 = real token) -> [B, S, H]."""
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, S, N, D] each
        dropout_active = not deterministic and self.cfg.attention_probs_dropout_prob > 0
        if self.cfg.attention_impl == "einsum" or dropout_active:
            y = self._einsum_attention(q, k, v, input_mask, deterministic=deterministic, rngs=rngs)
        elif self.cfg.attention_impl == "cudnn":
            # cuDNN's fused kernel masks by key length (BERT padding is a suffix). A fully padded
            # row (eval padding) keeps one key so its output stays finite.
            lengths = jnp.maximum(jnp.sum(input_mask, axis=-1, dtype=jnp.int32), 1)  # [B]
            y = jax.nn.dot_product_attention(
                q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
            )
        else:
            # The XLA path computes scores in float32 and the softmax in float32 for bf16 inputs.
            mask = input_mask.astype(jnp.bool_)[:, None, None, :]  # [B, 1, 1, S]
            y = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
        return self.output(y)  # [B, S, H]

    def _einsum_attention(self, q, k, v, input_mask, *, deterministic: bool, rngs) -> jax.Array:
        """Reference attention with the softmax in float32 and dropout on the probabilities."""
        scores = jnp.einsum("btnd,bsnd->bnts", q, k, preferred_element_type=jnp.float32)
        scores *= 1.0 / np.sqrt(self.cfg.head_dim)  # [B, N, S, S]
        mask = input_mask.astype(jnp.bool_)[:, None, None, :]  # [B, 1, 1, S]
        # A large finite negative (not -inf) keeps fully padded rows finite (uniform weights).
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = self.dropout(probs, deterministic=deterministic, rngs=rngs)
        return jnp.einsum("bnts,bsnd->btnd", probs.astype(self.cfg.dtype), v)  # [B, S, N, D]


class BertLayer(nnx.Module):
    """Post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attention = BertSelfAttention(cfg, rngs=rngs)
        self.attention_norm = _layer_norm(cfg, rngs)
        self.mlp_in = _dense(
            cfg,
            cfg.hidden_size,
            cfg.intermediate_size,
            ("embed", "mlp"),
            bias_axis="mlp",
            rngs=rngs,
        )
        self.mlp_out = _dense(
            cfg,
            cfg.intermediate_size,
            cfg.hidden_size,
            ("mlp", "embed"),
            bias_axis="norm",
            rngs=rngs,
        )
        self.mlp_norm = _layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self, x: jax.Array, input_mask: jax.Array, *, deterministic: bool, rngs
    ) -> jax.Array:
        h = self.attention(x, input_mask, deterministic=deterministic, rngs=rngs)  # [B, S, H]
        h = self.dropout(h, deterministic=deterministic, rngs=rngs)
        # Residual sum and LayerNorm in float32, stream back in the compute dtype.
        x = self.attention_norm(x.astype(jnp.float32) + h).astype(self.cfg.dtype)
        h = _activation(self.cfg, self.mlp_in(x))  # [B, S, I]
        h = self.dropout(self.mlp_out(h), deterministic=deterministic, rngs=rngs)  # [B, S, H]
        return self.mlp_norm(x.astype(jnp.float32) + h).astype(self.cfg.dtype)


def _apply_layer(layer: BertLayer, x, input_mask, deterministic: bool, rngs) -> jax.Array:
    return layer(x, input_mask, deterministic=deterministic, rngs=rngs)


_REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole layer in the backward pass.
    # Save dense-layer outputs; recompute attention scores (batched matmuls), GELU, LayerNorm.
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class BertModel(nnx.Module):
    """Embeddings, encoder layers and the [CLS] pooler; shared by pretraining and fine-tuning."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.pooler = _dense(
            cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), bias_axis="norm", rngs=rngs
        )

    def __call__(
        self,
        input_ids: jax.Array,
        input_mask: jax.Array,
        segment_ids: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns (sequence output [B, S, H], pooled [CLS] output [B, H]) in cfg.dtype."""
        x = self.embeddings(input_ids, segment_ids, deterministic=deterministic, rngs=rngs)
        apply = _apply_layer
        if self.cfg.remat_policy != "none":
            apply = nnx.remat(
                _apply_layer, policy=_REMAT_POLICIES[self.cfg.remat_policy], static_argnums=(3,)
            )
        for layer in self.layers:
            x = apply(layer, x, input_mask, deterministic, rngs)  # [B, S, H]
        pooled = jnp.tanh(self.pooler(x[:, 0]))  # [B, H]
        return x, pooled


# ------------------------------------------------------------------------------------------------
# Heads and task models


class BertMlmHead(nnx.Module):
    """dense -> act -> LayerNorm, then the decoder tied to the word embeddings plus a bias."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.transform = _dense(
            cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), bias_axis="norm", rngs=rngs
        )
        self.layer_norm = _layer_norm(cfg, rngs)
        self.bias = nnx.Param(_zeros("vocab")(rngs.params(), (cfg.vocab_size,), cfg.param_dtype))

    def __call__(self, x: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        """x [B, P, H], word_embeddings [V, H] -> logits [B, P, V] float32."""
        h = self.layer_norm(_activation(self.cfg, self.transform(x))).astype(self.cfg.dtype)
        logits = jnp.einsum(
            "bph,vh->bpv",
            h,
            word_embeddings.astype(self.cfg.dtype),
            preferred_element_type=jnp.float32,
        )
        return logits + self.bias[...].astype(jnp.float32)


class BertForPreTraining(nnx.Module):
    """BERT with the masked-LM and next-sentence-prediction heads."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.bert = BertModel(config, rngs=rngs)
        self.mlm_head = BertMlmHead(config, rngs=rngs)
        self.nsp_head = _classifier(config, 2, rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        input_mask: jax.Array,
        segment_ids: jax.Array,
        masked_lm_positions: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """[B, S] ids/mask/segments, [B, P] positions -> (mlm [B, P, V], nsp [B, 2]) float32.

        `rngs` needs a 'dropout' stream when deterministic=False.
        """
        _check_rngs(self.config, deterministic, rngs)
        x, pooled = self.bert(
            input_ids, input_mask, segment_ids, deterministic=deterministic, rngs=rngs
        )
        # Project only the P masked positions to the vocabulary, not all S.
        x = jnp.take_along_axis(x, masked_lm_positions[..., None], axis=1)  # [B, P, H]
        word_embeddings = self.bert.embeddings.word_embeddings.embedding[...]  # [V, H]
        mlm_logits = self.mlm_head(x, word_embeddings)  # [B, P, V]
        nsp_logits = self.nsp_head(pooled)  # [B, 2]
        return mlm_logits, nsp_logits


class BertForSequenceClassification(nnx.Module):
    """BERT encoder + pooler, dropout, and a linear classifier on the pooled [CLS] vector."""

    def __init__(self, config: BertConfig, num_labels: int, *, rngs: nnx.Rngs):
        if num_labels < 2:
            raise ValueError(f"num_labels={num_labels}: a classifier needs at least 2 labels.")
        self.config = config
        self.bert = BertModel(config, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)
        self.classifier = _classifier(config, num_labels, rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        input_mask: jax.Array,
        segment_ids: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """[B, S] ids/mask/segments -> logits [B, L] float32."""
        _check_rngs(self.config, deterministic, rngs)
        _, pooled = self.bert(
            input_ids, input_mask, segment_ids, deterministic=deterministic, rngs=rngs
        )
        pooled = self.dropout(pooled, deterministic=deterministic, rngs=rngs)
        return self.classifier(pooled)


def _classifier(cfg: BertConfig, num_classes: int, rngs: nnx.Rngs) -> nnx.Linear:
    # A tiny [H, C] matmul: computed in float32.
    axes = ("embed", "classes")
    return _dense(
        cfg, cfg.hidden_size, num_classes, axes, bias_axis="classes", rngs=rngs, dtype=jnp.float32
    )


def _check_rngs(cfg: BertConfig, deterministic: bool, rngs: nnx.Rngs | None) -> None:
    uses_dropout = cfg.hidden_dropout_prob > 0 or cfg.attention_probs_dropout_prob > 0
    if not deterministic and uses_dropout and rngs is None:
        raise ValueError(
            "deterministic=False needs rngs with a dropout stream: pass rngs=nnx.Rngs(dropout=key)."
        )


def count_params(state: Any) -> int:
    """Number of scalars in a parameter pytree (arrays or jax.ShapeDtypeStructs)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
