"""LoRA (Hu et al. 2021): low-rank adapters on an encoder's projections, for fine-tuning.

`attach(encoder, ...)` gives each targeted projection (attention query / key / value / output,
MLP in / out) a `lora` child: y = W x + (alpha / r) * B A dropout(x), with A [in, r] and B
[r, out] held in `flax.nnx.LoRA` (its `LoRAParam`s; B starts at zero, so the adapted model
starts as the pretrained one). Our projections are multi-dimensional (`LinearGeneral` over heads:
[H] -> [N, D], [N, D] -> [H]), which `nnx.LoRA` does not take: `Adapter` flattens around it. The
base parameters keep their paths (`.../query/kernel`), so the pretrained encoder restores into an
adapted model unchanged; adapters add `.../query/lora/low_rank/lora_a|lora_b`. A and B carry the
logical axes of their kernel's input and output, so they shard like it.

The model code calls every projection through `layers.project(module, x, ...)`, which adds the
adapter when one is attached. `merge(params, ...)` folds adapters into plain kernels (export).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.errors import ConfigError
from pretrain.models import layers

# peft.targets names -> the projections they mean, per architecture (attribute paths).
TARGETS = {
    "bert": {
        "query": ("attention", "query"), "key": ("attention", "key"),
        "value": ("attention", "value"), "output": ("attention", "output"),
        "mlp_in": ("mlp_in",), "mlp_out": ("mlp_out",),
    },
    "modernbert": {
        "query": ("attention", "query"), "key": ("attention", "key"),
        "value": ("attention", "value"), "output": ("attention", "output"),
        "mlp_in": ("mlp", "wi_input"), "mlp_gate": ("mlp", "wi_gate"), "mlp_out": ("mlp", "wo"),
    },
}  # fmt: skip
LORA = layers.LORA


class Adapter(nnx.Module):
    """(alpha / r) * B A dropout(x) for a projection from `in_shape` to `out_shape` (trailing
    dims), through `nnx.LoRA` on the flattened dims."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], axes: tuple, *,
                 rank: int, alpha: float, dropout: float, dtype: Any, rngs: nnx.Rngs):  # fmt: skip
        a_axes, b_axes = (axes[0], None), (None, axes[1])
        self.in_ndim, self.out_shape = len(in_shape), tuple(out_shape)
        self.scale = alpha / rank
        self.low_rank = nnx.LoRA(
            math.prod(in_shape), rank, math.prod(out_shape),
            a_initializer=layers.param_init(jax.nn.initializers.he_uniform(), *a_axes),
            b_initializer=layers.param_init(jax.nn.initializers.zeros, *b_axes),
            dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
        lead = x.shape[: x.ndim - self.in_ndim]
        flat = x.reshape(*lead, -1)
        flat = self.dropout(flat, deterministic=deterministic, rngs=rngs)
        return (self.scale * self.low_rank(flat)).reshape(*lead, *self.out_shape)


def _in_ndim(module: nnx.Module) -> int:
    return len(module.in_features) if isinstance(module.in_features, tuple) else 1


def _kernel_axes(module: nnx.Module) -> tuple[Any, Any]:
    """Logical axes of a projection's first input dim and first output dim."""
    names = module.kernel.get_metadata().get("out_sharding") or ()
    n = _in_ndim(module)
    return (names[0] if names else None), (names[n] if len(names) > n else None)


def attach(encoder: nnx.Module, arch: str, targets: Sequence[str], *, rank: int, alpha: float,
           dropout: float, dtype: Any, rngs: nnx.Rngs) -> int:  # fmt: skip
    """Adds an adapter to every targeted projection of every layer; returns how many."""
    table = TARGETS[arch]
    unknown = [t for t in targets if t not in table]
    if unknown or not targets:
        raise ConfigError(
            f"peft.targets={','.join(targets)!r}: choose among {', '.join(table)} for {arch}."
        )
    count = 0
    for layer in encoder.layers:
        for target in targets:
            module = layer
            for name in table[target]:
                module = getattr(module, name)
            shape, in_ndim = module.kernel[...].shape, _in_ndim(module)
            in_shape, out_shape = shape[:in_ndim], shape[in_ndim:]
            adapter = Adapter(in_shape, out_shape, _kernel_axes(module), rank=rank, alpha=alpha,
                              dropout=dropout, dtype=dtype, rngs=rngs)  # fmt: skip
            setattr(module, LORA, adapter)
            count += 1
    return count


def without_adapters(tree: dict[str, Any]) -> dict[str, Any]:
    """A pure-dict tree without its adapters (what a pretrained checkpoint holds)."""
    return {k: without_adapters(v) if isinstance(v, dict) else v
            for k, v in tree.items() if k != LORA}  # fmt: skip


def is_frozen(names: Sequence[str]) -> bool:
    """A parameter path of a LoRA model that does not train: the encoder's own weights."""
    return bool(names) and names[0] == "encoder" and LORA not in names


def merge(params: dict[str, Any], alpha: float, rank: int) -> dict[str, Any]:
    """A pure-dict parameter tree with every adapter folded into its kernel and removed:
    W' = W + (alpha / r) A B, reshaped to the kernel's dims (numpy, float32)."""

    def walk(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = {k: walk(v) for k, v in node.items()}
        adapter = node.pop(LORA, None)
        if adapter is not None:
            kernel = np.asarray(node["kernel"], np.float32)
            a = np.asarray(adapter["low_rank"]["lora_a"], np.float32)
            b = np.asarray(adapter["low_rank"]["lora_b"], np.float32)
            delta = (alpha / rank) * (a @ b)
            node["kernel"] = (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)
        return node

    return walk(params)


def trainable_count(params: Any) -> int:
    """Parameters of a LoRA model that train (adapters and task head)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if not is_frozen(names):
            total += int(np.prod(jnp.shape(leaf)))
    return total
