"""One parameter table maps our parameter tree to a Hugging Face state dict and back.

Our side is the pure dict of `nnx.to_pure_dict(nnx.state(model, nnx.Param))`; the HF side is a
flat `{name: np.ndarray}`. Pure numpy: callers move tensors to and from torch. Layouts: PyTorch
`nn.Linear.weight` is [out, in]; our kernels are [in, out...] (attention projections per head:
[H, N, D] and [N, D, H]). A fused HF tensor (ModernBERT's `Wqkv`, `Wi`) is several of ours
concatenated along its output dimension.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipeline.errors import DataError

Path = tuple[str | int, ...]

# transformers' activation names -> ours; its 'gelu_new' and 'gelu_pytorch_tanh' are one function.
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def config_sizes(
    hf_config: Mapping[str, Any], fields: Sequence[str], activation_key: str, model: str
) -> dict[str, Any]:
    """The integer `fields` and the activation of an HF `config.json` dict, as `EncoderConfig`
    keyword arguments; a missing field or an activation we lack is one DataError."""
    missing = [f for f in fields if f not in hf_config]
    if missing:
        raise DataError(f"HF config lacks {', '.join(missing)}: is it a {model} config.json?")
    act = hf_config.get(activation_key, "gelu")
    if act not in ACT_FROM_HF:
        raise DataError(
            f"HF config {activation_key}={act!r} is not supported: use one of "
            f"{', '.join(ACT_FROM_HF)}."
        )
    return {**{f: int(hf_config[f]) for f in fields}, "hidden_act": ACT_FROM_HF[act]}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One HF tensor and the parameter(s) of ours it holds."""

    hf_name: str
    hf_shape: tuple[int, ...]
    paths: tuple[Path, ...]  # Ours; several when the HF tensor is fused.
    shapes: tuple[tuple[int, ...], ...]
    linear: bool  # A PyTorch Linear weight: [out, in] there, [in, out...] here.

    def to_ours(self, x: np.ndarray) -> list[np.ndarray]:
        if not self.linear:
            return [x.reshape(self.shapes[0])]
        columns = x.T  # [in, out]
        sizes = [math.prod(s) // columns.shape[0] for s in self.shapes]
        parts = np.split(columns, np.cumsum(sizes)[:-1], axis=1)
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def to_hf(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        if not self.linear:
            return parts[0].reshape(self.hf_shape)
        d_in = self.hf_shape[1]
        return np.concatenate([p.reshape(d_in, -1) for p in parts], axis=1).T


def dims(config: Any) -> tuple[int, int, int, int, int]:
    """(hidden, intermediate, vocab, heads, head_dim) of an `EncoderConfig`: a table's sizes."""
    return (config.hidden_size, config.intermediate_size, config.vocab_size,
            config.num_attention_heads, config.head_dim)  # fmt: skip


# The integer config.json fields that BERT and ModernBERT name as we do (required on import).
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "max_position_embeddings")  # fmt: skip
SHARED_FIELDS = (*SIZE_FIELDS, "initializer_range")  # All the fields named alike.


def shared_fields(config: Any) -> dict[str, Any]:
    """The `SHARED_FIELDS` of an `EncoderConfig`, for its HF `config.json`."""
    return {name: getattr(config, name) for name in SHARED_FIELDS}


def linear(
    hf: str,
    path: Path,
    d_in: int,
    d_out: int,
    kernel_shape: tuple[int, ...] | None = None,
    bias: bool = True,
    bias_shape: tuple[int, ...] | None = None,
) -> list[Tensor]:
    """Weight (and bias) of a PyTorch Linear(d_in, d_out); our kernel and bias may split d_out
    per head."""
    kernel = Tensor(f"{hf}.weight", (d_out, d_in), ((*path, "kernel"),),
                    (kernel_shape or (d_in, d_out),), True)  # fmt: skip
    if not bias:
        return [kernel]
    bias_tensor = Tensor(
        f"{hf}.bias", (d_out,), ((*path, "bias"),), (bias_shape or (d_out,),), False
    )
    return [kernel, bias_tensor]


def fused(hf: str, paths: Sequence[Path], d_in: int, shapes: Sequence[tuple[int, ...]]) -> Tensor:
    """A bias-free Linear weight holding several of our kernels side by side."""
    d_out = sum(math.prod(s) // d_in for s in shapes)
    kernels = tuple((*p, "kernel") for p in paths)
    return Tensor(f"{hf}.weight", (d_out, d_in), kernels, tuple(shapes), True)


def norm(hf: str, path: Path, size: int, bias: bool = True) -> list[Tensor]:
    out = [Tensor(f"{hf}.weight", (size,), ((*path, "scale"),), ((size,),), False)]
    if bias:
        out.append(Tensor(f"{hf}.bias", (size,), ((*path, "bias"),), ((size,),), False))
    return out


def table_entry(hf: str, path: Path, rows: int, size: int) -> Tensor:
    """An embedding table (the same layout on both sides)."""
    return Tensor(f"{hf}.weight", (rows, size), ((*path, "embedding"),), ((rows, size),), False)


def _get(params: Mapping[str, Any], path: Path) -> np.ndarray:
    node: Any = params
    for key in path:
        if key not in node:
            raise ValueError(f"Parameter {'/'.join(map(str, path))} is missing.")
        node = node[key]
    return np.asarray(node, dtype=np.float32)


def to_hf(params: Mapping[str, Any], table: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """Our pure dict -> HF state dict (float32 numpy), for the tensors of `table`."""
    out = {}
    for t in table:
        parts = [_get(params, p) for p in t.paths]
        for path, x, shape in zip(t.paths, parts, t.shapes):
            if x.shape != shape:
                raise ValueError(
                    f"Parameter {'/'.join(map(str, path))} has shape {x.shape}, the config "
                    f"expects {shape}."
                )
        out[t.hf_name] = t.to_hf(parts)
    return out


def from_hf(state_dict: Mapping[str, Any], table: Sequence[Tensor], dtype: Any) -> dict[str, Any]:
    """HF state dict -> our pure dict (numpy, `dtype`); DataError names a missing or misshaped
    tensor. Tensors the table does not name are ignored."""
    params: dict[str, Any] = {}
    for t in table:
        if t.hf_name not in state_dict:
            raise DataError(
                f"Tensor {t.hf_name!r} (expected shape {t.hf_shape}) is missing from the HF "
                "state dict: check that the checkpoint and config describe the same model."
            )
        x = np.asarray(state_dict[t.hf_name])
        if x.shape != t.hf_shape:
            raise DataError(
                f"Tensor {t.hf_name!r} has shape {x.shape}, the config expects {t.hf_shape}: "
                "check that the checkpoint and config describe the same model."
            )
        for path, part in zip(t.paths, t.to_ours(x)):
            node = params
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = part.astype(dtype)
    return params
