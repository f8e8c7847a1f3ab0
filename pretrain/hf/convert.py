"""Conversion between our BERT parameters and Hugging Face (PyTorch) BERT state dicts.

Our side is the pure dict of `nnx.to_pure_dict(nnx.state(model, nnx.Param))`; the HF side is a
flat `{name: np.ndarray}` in `BertForPreTraining` / `BertForSequenceClassification` naming.
Pure numpy: callers move tensors to and from torch (this module never imports it).

Layouts: PyTorch `nn.Linear.weight` is [out, in]; our kernels are [in, out], with the attention
projections split per head: query/key/value [H, N, D] and the output projection [N, D, H].
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipeline.errors import DataError
from pretrain.models.config import ARCHITECTURE_FIELDS, EncoderConfig

HEADS = ("pretraining", "classification", "none")

# HF activation names for ours; HF's 'gelu_new' and 'gelu_pytorch_tanh' are the same function.
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One parameter: its HF name and shape, our pure-dict path and shape."""

    hf_name: str
    path: tuple[str | int, ...]
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    transpose: bool  # PyTorch Linear weight: [out, in] there, [in, ...out] here.

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return (x.T if self.transpose else x).reshape(self.shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.transpose:
            return x.reshape(self.hf_shape[::-1]).T
        return x.reshape(self.hf_shape)


def _linear(
    hf: str,
    path: tuple,
    d_in: int,
    d_out: int,
    kernel_shape: tuple[int, ...] | None = None,
    bias_shape: tuple[int, ...] | None = None,
) -> list[_Tensor]:
    """Weight and bias of a PyTorch Linear(d_in, d_out); ours may split d_out (or d_in) per head."""
    kernel_shape = kernel_shape or (d_in, d_out)
    bias_shape = bias_shape or (d_out,)
    return [
        _Tensor(f"{hf}.weight", (*path, "kernel"), (d_out, d_in), kernel_shape, True),
        _Tensor(f"{hf}.bias", (*path, "bias"), (d_out,), bias_shape, False),
    ]


def _layer_norm(hf: str, path: tuple, size: int) -> list[_Tensor]:
    return [
        _Tensor(f"{hf}.weight", (*path, "scale"), (size,), (size,), False),
        _Tensor(f"{hf}.bias", (*path, "bias"), (size,), (size,), False),
    ]


def _table(hf: str, path: tuple, rows: int, size: int) -> _Tensor:
    return _Tensor(f"{hf}.weight", (*path, "embedding"), (rows, size), (rows, size), False)


def _tensors(config: EncoderConfig, heads: str, num_labels: int = 0) -> list[_Tensor]:
    """Every parameter of the model with the given heads, in HF state-dict order."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    n, d = config.num_attention_heads, config.head_dim
    max_pos, types = config.max_position_embeddings, config.type_vocab_size
    emb = ("encoder", "embeddings")
    out = [
        _table("bert.embeddings.word_embeddings", (*emb, "word_embeddings"), v, h),
        _table("bert.embeddings.position_embeddings", (*emb, "position_embeddings"), max_pos, h),
        _table("bert.embeddings.token_type_embeddings", (*emb, "token_type_embeddings"), types, h),
        *_layer_norm("bert.embeddings.LayerNorm", (*emb, "layer_norm"), h),
    ]
    for layer in range(config.num_hidden_layers):
        hf, path = f"bert.encoder.layer.{layer}", ("encoder", "layers", layer)
        attn = (*path, "attention")
        for name in ("query", "key", "value"):
            out += _linear(f"{hf}.attention.self.{name}", (*attn, name), h, h, (h, n, d), (n, d))
        out += _linear(f"{hf}.attention.output.dense", (*attn, "output"), h, h, (n, d, h))
        out += _layer_norm(f"{hf}.attention.output.LayerNorm", (*path, "attention_norm"), h)
        out += _linear(f"{hf}.intermediate.dense", (*path, "mlp_in"), h, i)
        out += _linear(f"{hf}.output.dense", (*path, "mlp_out"), i, h)
        out += _layer_norm(f"{hf}.output.LayerNorm", (*path, "mlp_norm"), h)
    out += _linear("bert.pooler.dense", ("encoder", "pooler"), h, h)
    if heads == "pretraining":
        out += _linear("cls.predictions.transform.dense", ("mlm_head", "transform"), h, h)
        out += _layer_norm("cls.predictions.transform.LayerNorm", ("mlm_head", "layer_norm"), h)
        out.append(_Tensor("cls.predictions.bias", ("mlm_head", "bias"), (v,), (v,), False))
        out += _linear("cls.seq_relationship", ("nsp_head",), h, 2)
    elif heads == "classification":
        out += _linear("classifier", ("classifier",), h, num_labels)
    return out


def _check_heads(heads: str) -> None:
    if heads not in HEADS:
        raise ValueError(f"heads={heads!r} is not supported: use one of {', '.join(HEADS)}.")


def _detect_heads(params: Mapping[str, Any]) -> str:
    if "mlm_head" in params:
        return "pretraining"
    if "classifier" in params:
        return "classification"
    return "none"


def to_hf_state_dict(params: Mapping[str, Any], config: EncoderConfig) -> dict[str, np.ndarray]:
    """Our parameter pure dict -> HF state dict (float32 numpy).

    The heads follow the tree: 'mlm_head'/'nsp_head' give `BertForPreTraining` names (with the
    tied `cls.predictions.decoder.weight/bias` included, so `load_state_dict(strict=True)`
    works), 'classifier' gives `BertForSequenceClassification` names, neither gives `bert.*` only.
    """
    if "encoder" not in params:
        raise ValueError("Parameters have no 'encoder' subtree: pass nnx.to_pure_dict(params).")
    heads = _detect_heads(params)
    num_labels = np.shape(params["classifier"]["kernel"])[-1] if heads == "classification" else 0
    state_dict = {}
    for t in _tensors(config, heads, num_labels):
        node = params
        for key in t.path:
            if key not in node:
                raise ValueError(f"Parameter {'/'.join(map(str, t.path))} is missing.")
            node = node[key]
        x = np.asarray(node, dtype=np.float32)
        if x.shape != t.shape:
            raise ValueError(
                f"Parameter {'/'.join(map(str, t.path))} has shape {x.shape}, the config "
                f"expects {t.shape}."
            )
        state_dict[t.hf_name] = t.to_hf(x)
    if heads == "pretraining":
        state_dict["cls.predictions.decoder.weight"] = state_dict[
            "bert.embeddings.word_embeddings.weight"
        ]
        state_dict["cls.predictions.decoder.bias"] = state_dict["cls.predictions.bias"]
    return state_dict


def _normalize_names(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Old TF-converted names (LayerNorm gamma/beta) and bare `BertModel` keys -> our HF names."""
    bare = not any(k.startswith("bert.") for k in state_dict)
    out = {}
    for name, x in state_dict.items():
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        if bare and name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        out[name] = x
    return out


def from_hf_state_dict(
    state_dict: Mapping[str, Any], config: EncoderConfig, *, heads: str = "pretraining"
) -> dict[str, Any]:
    """HF state dict (numpy arrays) -> our parameter pure dict (numpy, config.param_dtype).

    heads: 'pretraining' (BertForPreTraining: needs the `cls.*` tensors), 'classification'
    (BertForSequenceClassification: needs `classifier.*`, num_labels from its shape) or 'none'
    (the `encoder` subtree only, e.g. to initialize a classifier's encoder). Tensors the target does
    not use are ignored. Load the result with `nnx.replace_by_pure_dict(state, params)`.
    """
    _check_heads(heads)
    sd = _normalize_names(state_dict)
    if heads == "pretraining":
        _resolve_tied_decoder(sd)
    num_labels = 0
    if heads == "classification":
        if "classifier.weight" not in sd:
            raise DataError("Tensor 'classifier.weight' is missing from the HF state dict.")
        num_labels = np.shape(sd["classifier.weight"])[0]
    params: dict[str, Any] = {}
    for t in _tensors(config, heads, num_labels):
        if t.hf_name not in sd:
            raise DataError(
                f"Tensor {t.hf_name!r} (expected shape {t.hf_shape}) is missing from the HF "
                "state dict: check that the checkpoint and config describe the same model."
            )
        x = np.asarray(sd[t.hf_name])
        if x.shape != t.hf_shape:
            raise DataError(
                f"Tensor {t.hf_name!r} has shape {x.shape}, the config expects {t.hf_shape}: "
                "check that the checkpoint and config describe the same model."
            )
        node = params
        for key in t.path[:-1]:
            node = node.setdefault(key, {})
        node[t.path[-1]] = t.to_ours(x).astype(config.param_dtype)
    return params


def _resolve_tied_decoder(sd: dict[str, Any]) -> None:
    """Our MLM decoder is the word-embedding table; reject checkpoints where it is not."""
    decoder = sd.get("cls.predictions.decoder.weight")
    embeddings = sd.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and embeddings is not None:
        if not np.array_equal(np.asarray(decoder), np.asarray(embeddings)):
            raise DataError(
                "Tensor 'cls.predictions.decoder.weight' differs from the word embeddings: "
                "untied MLM decoders are not supported (export with tie_word_embeddings=True)."
            )
    bias = sd.get("cls.predictions.decoder.bias")
    if bias is not None:
        if "cls.predictions.bias" not in sd:
            sd["cls.predictions.bias"] = bias
        elif not np.array_equal(np.asarray(bias), np.asarray(sd["cls.predictions.bias"])):
            raise DataError(
                "Tensors 'cls.predictions.decoder.bias' and 'cls.predictions.bias' differ: "
                "the checkpoint is not a standard BertForPreTraining."
            )


def bert_config_to_hf(config: EncoderConfig) -> dict[str, Any]:
    """A `config.json` dict that `transformers.BertConfig` (and `from_pretrained`) accepts."""
    return {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": _ACT_TO_HF[config.hidden_act],
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": 0,  # [PAD] is id 0 in our tokenizer (and in BERT's WordPiece vocab).
        "tie_word_embeddings": True,
    }


def bert_config_from_hf(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """HF `config.json` dict -> `EncoderConfig` keyword arguments (architecture fields only)."""
    if hf_config.get("model_type", "bert") != "bert":
        raise DataError(
            f"HF config model_type={hf_config['model_type']!r}: only 'bert' checkpoints convert."
        )
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise DataError(
            f"HF config position_embedding_type={position_type!r}: only absolute (learned) "
            "positions are supported."
        )
    act = hf_config.get("hidden_act", "gelu")
    if act not in _ACT_FROM_HF:
        raise DataError(
            f"HF config hidden_act={act!r} is not supported: use one of {', '.join(_ACT_FROM_HF)}."
        )
    # The integer architecture fields: HF's BertConfig names them as we do.
    fields = ("vocab_size",) + tuple(
        f for f in ARCHITECTURE_FIELDS if isinstance(getattr(EncoderConfig(), f), int)
    )
    missing = [f for f in fields if f not in hf_config]
    if missing:
        raise DataError(f"HF config lacks {', '.join(missing)}: is it a BERT config.json?")
    kwargs = {f: int(hf_config[f]) for f in fields}
    kwargs["hidden_act"] = _ACT_FROM_HF[act]
    # HF defaults for the optional fields.
    kwargs["hidden_dropout_prob"] = float(hf_config.get("hidden_dropout_prob", 0.1))
    kwargs["attention_probs_dropout_prob"] = float(
        hf_config.get("attention_probs_dropout_prob", 0.1)
    )
    kwargs["initializer_range"] = float(hf_config.get("initializer_range", 0.02))
    kwargs["layer_norm_eps"] = float(hf_config.get("layer_norm_eps", 1e-12))
    return kwargs
