"""Mesh, logical-axis rules and host-to-global batches: everything that knows about devices.

Parameters name *logical* axes (`'embed'`, `'heads'`, `'mlp'`, ...) in their NNX sharding
metadata; the model never mentions a mesh axis. `config.mesh.logical_axis_rules` maps each logical
axis to mesh axes (`'data'`, `'fsdp'`, `'tensor'`), in the style of t5x `partitioning.py` and
MaxText. That mapping lives in the config and is applied here (through Flax's
`nnx.get_partition_spec` under `logical_axis_rules`), and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipeline.errors import ConfigError
from pretrain.models.params import path_name

MESH_AXES = ("data", "fsdp", "tensor")
# Logical axis of the batch dimension of every input feature.
BATCH_AXIS = "batch"

# Shardings are given at jit boundaries and propagated by XLA inside (not explicit-mode types).
_AUTO = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)

Rules = Sequence[tuple[str, str | Sequence[str] | None]]

_REPLICATED_WARNED: set[str] = set()  # Parameters already reported as replicated.


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Resolves `mesh.data/fsdp/tensor` (-1 = all the rest) against the device count."""
    sizes = [int(mesh_config[name]) for name in MESH_AXES]
    named = dict(zip(MESH_AXES, sizes))
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ConfigError(f"config.mesh: only one of {MESH_AXES} may be -1 (got {named}).")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"config.mesh: axis sizes must be positive or -1, got {named}.")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh: {num_devices} devices cannot be split into fixed axes of product "
                f"{known}; set mesh sizes whose product divides {num_devices}."
            )
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config.mesh: data*fsdp*tensor = {math.prod(sizes)} but there are {num_devices} "
            f"devices; make the product equal the device count or set one axis to -1."
        )
    return tuple(sizes)


def create_mesh(
    mesh_config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None
) -> Mesh:
    """A mesh with axes (data, fsdp, tensor) over all devices (or the given ones)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    if devices == jax.devices():
        # make_mesh orders devices for the physical topology (ICI rings on TPU).
        return jax.make_mesh(shape, MESH_AXES, axis_types=_AUTO, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=_AUTO)


def _axis_names(axes: Any) -> tuple[str, ...]:
    return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def _one_use_per_mesh_axis(spec: Sequence[Any]) -> PartitionSpec:
    """Drops a mesh axis already used by an earlier dimension (an array may use each once)."""
    used: set[str] = set()
    out = []
    for axes in spec:
        free = tuple(a for a in _axis_names(axes) if a not in used)
        used.update(free)
        out.append(free[0] if len(free) == 1 else (free or None))
    return PartitionSpec(*out)


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per array."""
    table = dict(rules)
    for name in logical_axes:
        if name is not None and name not in table:
            raise ConfigError(
                f"logical axis {name!r} has no entry in config.mesh.logical_axis_rules; add "
                f"('{name}', MESH_AXIS_OR_None) to the rules."
            )
    return _one_use_per_mesh_axis([None if n is None else table[n] for n in logical_axes])


def _fit_spec_to_shape(
    spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, name: str
) -> PartitionSpec:
    """Replicates any dimension that its mesh axes do not divide (e.g. an odd vocabulary), and
    says so once per parameter: an FSDP or tensor-parallel saving lost silently is a surprise."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        size = math.prod(mesh.shape[a] for a in _axis_names(axes))
        if dim % size == 0:
            fitted.append(axes)
            continue
        fitted.append(None)
        if name not in _REPLICATED_WARNED:
            _REPLICATED_WARNED.add(name)
            logging.warning(
                "%s: a dimension of size %d does not divide over mesh axes %s (%d devices); it "
                "is replicated instead of sharded.",
                name,
                dim,
                _axis_names(axes),
                size,
            )
    return PartitionSpec(*fitted)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a pytree that may contain nnx Variables (params, optimizer state).

    Variables are sharded by their NNX sharding metadata (logical axis names, see
    `pretrain/models/layers.py`) mapped through `rules` by `nnx.get_partition_spec`; any other
    array leaf (step counters, optimizer scalars) is replicated. Optimizer moments are
    `nnx.Param`-shaped copies of the parameters with the same metadata, so they shard exactly
    like the parameters (FSDP).
    """
    for leaf in jax.tree.leaves(abstract_tree, is_leaf=_is_variable):
        if _is_variable(leaf):  # Every logical name needs a rule (or it reads as a mesh axis).
            logical_to_mesh_spec(leaf.get_metadata().get("out_sharding") or (), rules)
    with flax_spmd.logical_axis_rules(tuple(rules)):
        specs = nnx.get_partition_spec(abstract_tree)

    def leaf_sharding(path: tuple[Any, ...], leaf: Any, spec: Any) -> Any:
        if not _is_variable(leaf):
            return NamedSharding(mesh, PartitionSpec())
        if not hasattr(leaf.get_value(), "shape"):
            return leaf  # optax's MaskedNode (no state for a frozen parameter): no leaves.
        fitted = _one_use_per_mesh_axis(tuple(spec.get_value()))
        fitted = _fit_spec_to_shape(fitted, leaf.get_value().shape, mesh, path_name(path))
        return leaf.replace(NamedSharding(mesh, fitted))

    return jax.tree_util.tree_map_with_path(
        leaf_sharding, abstract_tree, specs, is_leaf=_is_variable
    )


def batch_spec(rules: Rules) -> PartitionSpec:
    """PartitionSpec of the leading (batch) dimension of every input feature."""
    return logical_to_mesh_spec((BATCH_AXIS,), rules)


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dimension is split (the product of the batch axes' sizes)."""
    (axes,) = tuple(batch_spec(rules)) or (None,)
    return math.prod(mesh.shape[a] for a in _axis_names(axes))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(rules))


def process_rows(mesh: Mesh, rules: Rules, global_batch_size: int) -> np.ndarray:
    """Global row indices of the batch that this process's devices hold (what it must load).

    The one step -> rows rule: derived from the batch sharding itself, so right for any mesh
    layout and any number of processes (with pure data parallelism, one contiguous block per
    process), and in the order `host_to_global` expects.
    """
    sharding = batch_sharding(mesh, rules)
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    rows = sorted(
        {r for idx in index_map.values() for r in range(*idx[0].indices(global_batch_size))}
    )
    return np.asarray(rows, dtype=np.int64)


def host_to_global(
    local_batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules, global_batch_size: int
) -> dict[str, jax.Array]:
    """Global jax.Arrays from this process's rows of the batch (`process_rows`, in that order)."""
    sharding = batch_sharding(mesh, rules)
    return {
        key: jax.make_array_from_process_local_data(
            sharding, np.asarray(x), (global_batch_size, *np.shape(x)[1:])
        )
        for key, x in local_batch.items()
    }
