"""BERT parameters and configs in Hugging Face's naming (`Bert*` classes of transformers).

Heads (what the tree holds besides the encoder) and their transformers classes:

    pretraining     BertForPreTraining: pooler, MLM head (`cls.predictions`), NSP head
    masked_lm       BertForMaskedLM: MLM head, no pooler
    classification  BertForSequenceClassification: pooler, `classifier`
    token           BertForTokenClassification: `classifier` per token, no pooler
    qa              BertForQuestionAnswering: `qa_outputs` (start, end), no pooler
    none            BertModel: the encoder with its pooler
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipeline.errors import DataError
from pretrain.hf.tensors import (
    SIZE_FIELDS,
    Tensor,
    config_sizes,
    dims,
    linear,
    norm,
    shared_fields,
    table_entry,
)
from pretrain.models.config import EncoderConfig

CLASSES = {
    "pretraining": "BertForPreTraining",
    "masked_lm": "BertForMaskedLM",
    "classification": "BertForSequenceClassification",
    "token": "BertForTokenClassification",
    "qa": "BertForQuestionAnswering",
    "none": "BertModel",
}
WITH_POOLER = ("pretraining", "classification", "none")
# HF activation names for ours (HF's 'gelu_new' and 'gelu_pytorch_tanh' are the same function).
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def table(config: EncoderConfig, head: str, num_labels: int = 0) -> list[Tensor]:
    """Every tensor of the transformers class of `head`, in state-dict order."""
    h, i, v, n, d = dims(config)
    emb = ("encoder", "embeddings")
    out = [
        table_entry("bert.embeddings.word_embeddings", (*emb, "word_embeddings"), v, h),
        table_entry(
            "bert.embeddings.position_embeddings",
            (*emb, "position_embeddings"),
            config.max_position_embeddings,
            h,
        ),  # fmt: skip
        table_entry(
            "bert.embeddings.token_type_embeddings",
            (*emb, "token_type_embeddings"),
            config.type_vocab_size,
            h,
        ),  # fmt: skip
        *norm("bert.embeddings.LayerNorm", (*emb, "layer_norm"), h),
    ]
    for layer in range(config.num_hidden_layers):
        hf, path = f"bert.encoder.layer.{layer}", ("encoder", "layers", layer)
        attn = (*path, "attention")
        for name in ("query", "key", "value"):
            out += linear(
                f"{hf}.attention.self.{name}", (*attn, name), h, h, (h, n, d), True, (n, d)
            )
        out += linear(f"{hf}.attention.output.dense", (*attn, "output"), h, h, (n, d, h))
        out += norm(f"{hf}.attention.output.LayerNorm", (*path, "attention_norm"), h)
        out += linear(f"{hf}.intermediate.dense", (*path, "mlp_in"), h, i)
        out += linear(f"{hf}.output.dense", (*path, "mlp_out"), i, h)
        out += norm(f"{hf}.output.LayerNorm", (*path, "mlp_norm"), h)
    if head in WITH_POOLER:
        out += linear("bert.pooler.dense", ("encoder", "pooler"), h, h)
    if head in ("pretraining", "masked_lm"):
        mlm = ("mlm_head", "head")
        out += linear("cls.predictions.transform.dense", (*mlm, "transform"), h, h)
        out += norm("cls.predictions.transform.LayerNorm", (*mlm, "layer_norm"), h)
        out.append(Tensor("cls.predictions.bias", (v,), (("mlm_head", "bias"),), ((v,),), False))
    if head == "pretraining":
        out += linear("cls.seq_relationship", ("nsp_head",), h, 2)
    elif head in ("classification", "token"):
        out += linear("classifier", ("classifier",), h, num_labels)
    elif head == "qa":
        out += linear("qa_outputs", ("classifier",), h, 2)
    return out


def add_tied(state_dict: dict[str, np.ndarray], head: str) -> None:
    """The tied decoder tensors HF's MLM classes list (so `load_state_dict(strict=True)` works)."""
    if head in ("pretraining", "masked_lm"):
        state_dict[_TIED[0]] = state_dict["bert.embeddings.word_embeddings.weight"]
        state_dict[_TIED[1]] = state_dict["cls.predictions.bias"]


def drop_tied(state_dict: dict[str, np.ndarray]) -> None:
    """What HF stores once: the decoder is the embedding table."""
    for name in _TIED:
        state_dict.pop(name, None)


def normalize(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Old TF-converted names (LayerNorm gamma/beta) and bare `BertModel` keys -> HF's names;
    checks that the MLM decoder is tied to the embeddings (ours always is)."""
    bare = not any(k.startswith("bert.") for k in state_dict)
    sd = {}
    for name, x in state_dict.items():
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        if bare and name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        sd[name] = x
    decoder, embeddings = sd.get(_TIED[0]), sd.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and embeddings is not None:
        if not np.array_equal(np.asarray(decoder), np.asarray(embeddings)):
            raise DataError(
                "Tensor 'cls.predictions.decoder.weight' differs from the word embeddings: "
                "untied MLM decoders are not supported (export with tie_word_embeddings=True)."
            )
    bias = sd.get(_TIED[1])
    if bias is not None:
        if "cls.predictions.bias" not in sd:
            sd["cls.predictions.bias"] = bias
        elif not np.array_equal(np.asarray(bias), np.asarray(sd["cls.predictions.bias"])):
            raise DataError(
                "Tensors 'cls.predictions.decoder.bias' and 'cls.predictions.bias' differ: "
                "the checkpoint is not a standard BertForPreTraining."
            )
    return sd


def config_to_hf(config: EncoderConfig, head: str, tokenizer: Any) -> dict[str, Any]:
    """A `config.json` dict that `transformers.BertConfig` (and `from_pretrained`) accepts."""
    return {
        "architectures": [CLASSES[head]],
        "model_type": "bert",
        **shared_fields(config),
        "hidden_act": _ACT_TO_HF[config.hidden_act],
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": int(tokenizer.pad_id) if tokenizer is not None else 0,
        "tie_word_embeddings": True,
    }


def config_from_hf(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """HF BERT `config.json` dict -> `EncoderConfig` keyword arguments."""
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise DataError(
            f"HF config position_embedding_type={position_type!r}: only absolute (learned) "
            "positions are supported."
        )
    fields = (*SIZE_FIELDS, "type_vocab_size")
    kwargs = config_sizes(hf_config, fields, "hidden_act", "BERT")
    kwargs["arch"] = "bert"
    # HF defaults for the optional fields.
    kwargs["hidden_dropout_prob"] = float(hf_config.get("hidden_dropout_prob", 0.1))
    kwargs["attention_probs_dropout_prob"] = float(
        hf_config.get("attention_probs_dropout_prob", 0.1)
    )
    kwargs["initializer_range"] = float(hf_config.get("initializer_range", 0.02))
    kwargs["layer_norm_eps"] = float(hf_config.get("layer_norm_eps", 1e-12))
    return kwargs
