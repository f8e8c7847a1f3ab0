"""Mesh, logical-axis rules and host-to-global batches: everything that knows about devices.

Parameters name *logical* axes (`'embed'`, `'heads'`, `'mlp'`, ...) in their metadata; the model
never mentions a mesh axis. `config.mesh.logical_axis_rules` maps each logical axis to mesh axes
(`'data'`, `'fsdp'`, `'tensor'`), in the style of t5x `partitioning.py` and MaxText. That mapping
lives in the config and is applied here, and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# Logical axis of the batch dimension of every input feature.
BATCH_AXIS = "batch"

# Shardings are given at jit boundaries and propagated by XLA inside (not explicit-mode types).
_AUTO = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Resolves `mesh.data/fsdp/tensor` (-1 = all the rest) against the device count."""
    sizes = [int(mesh_config[name]) for name in MESH_AXES]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(
            f"config.mesh: only one of {MESH_AXES} may be -1 (got {dict(zip(MESH_AXES, sizes))})."
        )
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"config.mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}."
        )
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(
                f"config.mesh: {num_devices} devices cannot be split into fixed axes of product "
                f"{known}; set mesh sizes whose product divides {num_devices}."
            )
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
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


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per array."""
    table = {name: mesh_axes for name, mesh_axes in rules}
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(
                f"logical axis {name!r} has no entry in config.mesh.logical_axis_rules; add "
                f"('{name}', MESH_AXIS_OR_None) to the rules."
            )
        mesh_axes = table[name]
        if mesh_axes is None:
            spec.append(None)
            continue
        mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        free = tuple(a for a in mesh_axes if a not in used)
        used.update(free)
        spec.append(free[0] if len(free) == 1 else (free or None))
    return PartitionSpec(*spec)


def _fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Replicates any dimension that its mesh axes do not divide (e.g. an odd vocabulary)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        size = math.prod(mesh.shape[a] for a in names)
        fitted.append(axes if dim % size == 0 else None)
    return PartitionSpec(*fitted)


def _logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    axes = variable.get_metadata().get("logical_axes")
    if axes is None:
        # Every model parameter is annotated; an unannotated one is replicated.
        return (None,) * len(variable.get_value().shape)
    return tuple(axes)


def state_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a pytree that may contain nnx Variables (params, optimizer state).

    Variables are sharded by their `logical_axes` metadata; any other array leaf (step counters,
    optimizer scalars) is replicated. Optimizer moments are `nnx.Param`-shaped copies of the
    parameters and carry the same metadata, so they shard exactly like the parameters (FSDP).
    """

    def leaf_sharding(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            spec = logical_to_mesh_spec(_logical_axes(x), rules)
            spec = _fit_spec_to_shape(spec, x.get_value().shape, mesh)
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(leaf_sharding, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_spec(rules: Rules) -> PartitionSpec:
    """PartitionSpec of the leading (batch) dimension of every input feature."""
    return logical_to_mesh_spec((BATCH_AXIS,), rules)


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dimension is split (the product of the batch axes' sizes)."""
    (axes,) = tuple(batch_spec(rules)) or (None,)
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    return math.prod(mesh.shape[a] for a in names)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(rules))


def process_rows(mesh: Mesh, rules: Rules, global_batch_size: int) -> np.ndarray:
    """Global row indices of the batch that this process's devices hold (what it must load).

    Rows are derived from the sharding itself, so they are right for any mesh layout and any
    number of processes; with pure data parallelism they are one contiguous block per process.
    """
    sharding = batch_sharding(mesh, rules)
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    rows = sorted(
        {r for idx in index_map.values() for r in range(*idx[0].indices(global_batch_size))}
    )
    return np.asarray(rows, dtype=np.int64)


def host_to_global(
    local_batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    rules: Rules,
    rows: np.ndarray,
    global_batch_size: int,
) -> dict[str, jax.Array]:
    """Assembles global jax.Arrays from this process's rows (`rows`, as from `process_rows`)."""
    sharding = batch_sharding(mesh, rules)
    position = {int(r): i for i, r in enumerate(rows)}

    def to_global(x: np.ndarray) -> jax.Array:
        shape = (global_batch_size, *x.shape[1:])

        def fetch(index: tuple[slice, ...]) -> np.ndarray:
            start, stop, _ = index[0].indices(global_batch_size)
            lo = position[start]  # Rows of one device shard are contiguous in `rows`.
            return x[(slice(lo, lo + stop - start), *index[1:])]

        return jax.make_array_from_callback(shape, sharding, fetch)

    return {k: to_global(np.asarray(v)) for k, v in local_batch.items()}
