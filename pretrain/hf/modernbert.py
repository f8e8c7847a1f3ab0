"""ModernBERT parameters and configs in Hugging Face's naming (`ModernBert*` classes).

Heads and their transformers classes:

    masked_lm       ModernBertForMaskedLM: `head` (dense, act, norm), decoder tied + its bias
    classification  ModernBertForSequenceClassification: `head`, `classifier`
    token           ModernBertForTokenClassification: `head`, `classifier` per token
    qa              ModernBertForQuestionAnswering: `head`, `classifier` (start, end)
    none            ModernBertModel

HF fuses the query, key and value projections (`Wqkv`, [3H, H]) and the two GeGLU halves (`Wi`,
[2I, H]: input first, gate second); ours are separate kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_pipeline.errors import DataError
from pretrain.hf.tensors import (
    SIZE_FIELDS,
    Tensor,
    config_sizes,
    dims,
    fused,
    linear,
    norm,
    shared_fields,
    table_entry,
)
from pretrain.models.config import EncoderConfig

CLASSES = {
    "masked_lm": "ModernBertForMaskedLM",
    "classification": "ModernBertForSequenceClassification",
    "token": "ModernBertForTokenClassification",
    "qa": "ModernBertForQuestionAnswering",
    "none": "ModernBertModel",
}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
TIED = "decoder.weight"


def table(config: EncoderConfig, head: str, num_labels: int = 0) -> list[Tensor]:
    """Every tensor of the transformers class of `head`, in state-dict order."""
    h, i, v, n, d = dims(config)
    emb = ("encoder", "embeddings")
    out = [
        table_entry("model.embeddings.tok_embeddings", (*emb, "tok_embeddings"), v, h),
        *norm("model.embeddings.norm", (*emb, "norm"), h, bias=False),
    ]
    for layer in range(config.num_hidden_layers):
        hf, path = f"model.layers.{layer}", ("encoder", "layers", layer)
        attn, mlp = (*path, "attention"), (*path, "mlp")
        if layer > 0:
            out += norm(f"{hf}.attn_norm", (*path, "attn_norm"), h, bias=False)
        qkv = [(*attn, name) for name in ("query", "key", "value")]
        out.append(fused(f"{hf}.attn.Wqkv", qkv, h, [(h, n, d)] * 3))
        out += linear(f"{hf}.attn.Wo", (*attn, "output"), h, h, (n, d, h), bias=False)
        out += norm(f"{hf}.mlp_norm", (*path, "mlp_norm"), h, bias=False)
        out.append(fused(f"{hf}.mlp.Wi", [(*mlp, "wi_input"), (*mlp, "wi_gate")], h, [(h, i)] * 2))
        out += linear(f"{hf}.mlp.Wo", (*mlp, "wo"), i, h, bias=False)
    out += norm("model.final_norm", ("encoder", "final_norm"), h, bias=False)
    if head == "none":
        return out
    prediction = ("mlm_head", "head") if head == "masked_lm" else ("head",)
    out += linear("head.dense", (*prediction, "transform"), h, h, bias=False)
    out += norm("head.norm", (*prediction, "layer_norm"), h, bias=False)
    if head == "masked_lm":
        out.append(Tensor("decoder.bias", (v,), (("mlm_head", "bias"),), ((v,),), False))
    else:
        outputs = 2 if head == "qa" else num_labels
        out += linear("classifier", ("classifier",), h, outputs)
    return out


def add_tied(state_dict: dict[str, Any], head: str) -> None:
    if head == "masked_lm":
        state_dict[TIED] = state_dict["model.embeddings.tok_embeddings.weight"]


def drop_tied(state_dict: dict[str, Any]) -> None:
    state_dict.pop(TIED, None)


def config_to_hf(config: EncoderConfig, head: str, tokenizer: Any) -> dict[str, Any]:
    """A `config.json` dict that `transformers.ModernBertConfig` accepts."""
    ids = {}
    if tokenizer is not None:
        ids = {
            "pad_token_id": int(tokenizer.pad_id),
            "cls_token_id": int(tokenizer.cls_id),
            "sep_token_id": int(tokenizer.sep_id),
            "bos_token_id": int(tokenizer.cls_id),
            "eos_token_id": int(tokenizer.sep_id),
        }
    return {
        "architectures": [CLASSES[head]],
        "model_type": "modernbert",
        **shared_fields(config),
        "hidden_activation": _ACT_TO_HF[config.hidden_act],
        "classifier_activation": _ACT_TO_HF[config.hidden_act],
        "norm_eps": config.layer_norm_eps,
        "norm_bias": False,
        "attention_bias": False,
        "mlp_bias": False,
        "decoder_bias": True,
        "classifier_bias": False,
        "attention_dropout": config.attention_probs_dropout_prob,
        "embedding_dropout": config.hidden_dropout_prob,
        "mlp_dropout": config.hidden_dropout_prob,
        "global_attn_every_n_layers": config.global_attn_every_n_layers,
        "local_attention": config.local_attention,
        "global_rope_theta": config.global_rope_theta,
        "local_rope_theta": config.local_rope_theta,
        "classifier_pooling": config.classifier_pooling,
        "tie_word_embeddings": True,
        **ids,
    }


def config_from_hf(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """HF ModernBERT `config.json` dict (as transformers saves it) -> `EncoderConfig` kwargs."""
    kwargs = config_sizes(hf_config, SIZE_FIELDS, "hidden_activation", "ModernBERT")
    for flag, want in (("norm_bias", False), ("attention_bias", False), ("mlp_bias", False),
                       ("decoder_bias", True), ("classifier_bias", False)):  # fmt: skip
        if bool(hf_config.get(flag, want)) != want:
            raise DataError(f"HF config {flag}={hf_config[flag]}: only {flag}={want} converts.")
    thetas = _rope_thetas(hf_config)
    kwargs.update(
        arch="modernbert",
        layer_norm_eps=float(hf_config.get("norm_eps", 1e-5)),
        initializer_range=float(hf_config.get("initializer_range", 0.02)),
        global_attn_every_n_layers=int(hf_config.get("global_attn_every_n_layers", 3)),
        local_attention=int(hf_config.get("local_attention", 128)),
        global_rope_theta=thetas[0],
        local_rope_theta=thetas[1],
        classifier_pooling=hf_config.get("classifier_pooling", "cls"),
        hidden_dropout_prob=float(hf_config.get("mlp_dropout", 0.0)),
        attention_probs_dropout_prob=float(hf_config.get("attention_dropout", 0.0)),
    )
    return kwargs


def _rope_thetas(hf_config: Mapping[str, Any]) -> tuple[float, float]:
    """(global, local) rotary bases, from the old keys or transformers 5's `rope_parameters`."""
    rope = hf_config.get("rope_parameters") or {}
    global_theta = rope.get("full_attention", {}).get("rope_theta")
    local_theta = rope.get("sliding_attention", {}).get("rope_theta")
    return (
        float(global_theta or hf_config.get("global_rope_theta", 160_000.0)),
        float(local_theta or hf_config.get("local_rope_theta", 10_000.0)),
    )
