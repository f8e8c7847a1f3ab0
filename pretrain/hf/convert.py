"""Our parameter trees and configs <-> Hugging Face state dicts and `config.json`, any arch.

The per-architecture tables live in `bert.py` and `modernbert.py`; this module picks one by
`config.arch` (ours) or `model_type` (HF's). A `head` names what the tree holds besides the
encoder (see those modules): pretraining, masked_lm, classification, token, qa, none.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from data_pipeline.errors import DataError
from pretrain.hf import bert, modernbert, tensors
from pretrain.models.config import EncoderConfig

ARCHS: dict[str, ModuleType] = {"bert": bert, "modernbert": modernbert}
HEADS = ("pretraining", "masked_lm", "classification", "token", "qa", "none")


def _module(config: EncoderConfig) -> ModuleType:
    return ARCHS[config.arch]


def check_head(config: EncoderConfig, head: str) -> None:
    if head not in _module(config).CLASSES:
        raise ValueError(
            f"head={head!r} is not one of {config.arch}'s: {', '.join(_module(config).CLASSES)}."
        )


def pretraining_head(params: Mapping[str, Any]) -> str:
    """'pretraining' (MLM + NSP) or 'masked_lm' (MLM only) for a pretraining tree."""
    return "pretraining" if params.get("nsp_head") else "masked_lm"


def num_outputs(params: Mapping[str, Any]) -> int:
    return int(np.shape(params["classifier"]["kernel"])[-1]) if "classifier" in params else 0


def to_hf_state_dict(
    params: Mapping[str, Any], config: EncoderConfig, head: str | None = None
) -> dict[str, np.ndarray]:
    """Our pure dict -> HF state dict (float32 numpy) of the class of `head` (default: the
    pretraining head the tree holds), with the tied decoder listed so that
    `load_state_dict(strict=True)` works."""
    if "encoder" not in params:
        raise ValueError("Parameters have no 'encoder' subtree: pass nnx.to_pure_dict(params).")
    head = head or pretraining_head(params)
    check_head(config, head)
    module = _module(config)
    state_dict = tensors.to_hf(params, module.table(config, head, num_outputs(params)))
    module.add_tied(state_dict, head)
    return state_dict


def from_hf_state_dict(
    state_dict: Mapping[str, Any], config: EncoderConfig, *, head: str = "pretraining"
) -> dict[str, Any]:
    """HF state dict (numpy arrays) -> our parameter pure dict (numpy, config.param_dtype).

    Tensors the target does not use are ignored; a missing or misshaped one is a DataError.
    Load the result with `nnx.replace_by_pure_dict(state, params)`.
    """
    check_head(config, head)
    module = _module(config)
    sd = bert.normalize(state_dict) if config.arch == "bert" else dict(state_dict)
    labels = 0
    if head in ("classification", "token"):
        if "classifier.weight" not in sd:
            raise DataError("Tensor 'classifier.weight' is missing from the HF state dict.")
        labels = int(np.shape(sd["classifier.weight"])[0])
    return tensors.from_hf(sd, module.table(config, head, labels), config.param_dtype)


def config_to_hf(
    config: EncoderConfig,
    head: str,
    tokenizer: Any = None,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """A `config.json` dict for the transformers class of `head` (with `id2label` for task
    heads; 'regression' problem type for a one-output classifier)."""
    out = _module(config).config_to_hf(config, head, tokenizer)
    if head in ("classification", "token") and labels is not None:
        names = labels or ["LABEL_0"]
        out["id2label"] = {str(i): name for i, name in enumerate(names)}
        out["label2id"] = {name: i for i, name in enumerate(names)}
        if head == "classification" and not labels:
            out["problem_type"] = "regression"
    return out


def config_from_hf(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """HF `config.json` dict -> `EncoderConfig` keyword arguments (architecture included)."""
    model_type = hf_config.get("model_type", "bert")
    if model_type not in ARCHS:
        raise DataError(
            f"HF config model_type={model_type!r}: only {', '.join(ARCHS)} checkpoints convert."
        )
    return ARCHS[model_type].config_from_hf(hf_config)


def drop_tied(state_dict: dict[str, Any], config: EncoderConfig) -> None:
    """Removes what HF stores once (the decoder is the embedding table) before saving."""
    _module(config).drop_tied(state_dict)
