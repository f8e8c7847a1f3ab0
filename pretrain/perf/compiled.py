"""The training programs of a config, compiled ahead of time for a TPU slice that is not here.

libtpu's compile-only topologies (`jax.experimental.topologies`) give abstract devices of any
TPU generation and slice shape; the loop's own mesh (`sharding.create_mesh`), steps
(`timing.build_train_steps`, as `loop.train` builds them) and abstract state are lowered on them
and compiled by the TPU compiler: the executable a pod would run, with its per-chip memory,
cost and HLO. Nothing is allocated and nothing runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import Any

import jax
import ml_collections
from jax.experimental import topologies
from jax.sharding import Mesh

from data_pipeline.errors import UserError
from pretrain.compute import chips, gpu_targets
from pretrain.perf import collectives, timing
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import sharding, steps, validation

INSTALL_HINT = 'install the TPU compiler with pip install -e ".[tpu]"'
GPU_INSTALL_HINT = 'install the CUDA compiler plugin with pip install -e ".[gpu-plan]"'
_LIBTPU_ENV = (
    ("TPU_SKIP_MDS_QUERY", "1"),
    ("TPU_STDERR_LOG_LEVEL", "3"),
    ("TPU_MIN_LOG_LEVEL", "3"),
    ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
)
_OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|exceeds .*memory")


class CompilerUnavailableError(UserError):
    """libtpu (or the CUDA plugin) is missing or cannot load on this machine."""


def compile_only_devices(topology: chips.Topology) -> list[Any]:
    """The slice's abstract devices (slice 0's first), from libtpu or the CUDA plugin; one clear
    error without them."""
    if topology.chip.platform == "cuda":
        return _gpu_devices(topology)
    if importlib.util.find_spec("libtpu") is None:
        raise CompilerUnavailableError(f"the libtpu wheel is not installed: {INSTALL_HINT}.")
    # No TPU VM here: libtpu must not wait for a metadata server, nor log about its absence;
    # and compiling touches no chip, so plans may run side by side (libtpu locks by default).
    for name, value in _LIBTPU_ENV:
        os.environ.setdefault(name, value)
    try:
        description = topologies.get_topology_desc(
            platform="tpu",
            topology_name=topology.topology_name,
            chip_config_name=topology.chip.chip_config,
            chips_per_host_bounds=topology.chips_per_host_bounds,
            num_slices=topology.num_slices,
        )
    except Exception as e:  # noqa: BLE001 - libtpu's own errors are RuntimeErrors of many shapes
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompilerUnavailableError(
            f"libtpu cannot give {topology.topology_name} ({first}); {INSTALL_HINT}."
        ) from e
    finally:
        _forget_libtpu_guesses()
    return list(description.devices)


# What libtpu writes into the C environment when it finds no TPU VM: warnings in place of a
# worker id and an accelerator type. A child process would inherit them and take this machine
# for a TPU VM (`command.py` then waits for a cluster that does not exist).
_LIBTPU_GUESSES = (
    "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID", "CLOUD_TPU_ACCELERATOR_TYPE", "TPU_ACCELERATOR_TYPE",
    "TPU_WORKER_HOSTNAMES",
)  # fmt: skip


def _gpu_devices(topology: chips.Topology) -> list[Any]:
    """GPU hosts' abstract devices: the CUDA plugin compiles for a description, no GPU needed.
    Its validation of a local CUDA runs only when JAX may use CUDA, and plan.py runs on CPU."""
    if importlib.util.find_spec("jax_cuda12_plugin") is None:
        raise CompilerUnavailableError(f"the CUDA plugin is not installed: {GPU_INSTALL_HINT}.")
    try:
        description = topologies.get_topology_desc(
            platform="cuda",
            target_config=gpu_targets.target_config(topology.chip),
            topology=topology.topology_name,
        )
    except Exception as e:  # noqa: BLE001 - NotImplementedError when the plugin did not load
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompilerUnavailableError(
            f"the CUDA plugin cannot give {topology.name} ({first}); {GPU_INSTALL_HINT} (its "
            "version must be the installed jax's), and run with JAX_PLATFORMS=cpu."
        ) from e
    return list(description.devices)


def network_domains(devices: Any) -> list[int]:
    """Per device (mesh order), the group its fast links join: a TPU slice (ICI), a GPU host
    (NVLink). A collective whose group spans two crosses the slower network (DCN, InfiniBand)."""
    return [
        (d.process_index if d.platform == "gpu" else getattr(d, "slice_index", 0)) or 0
        for d in devices
    ]


def _forget_libtpu_guesses() -> None:
    # os.environ is Python's copy, untouched by libtpu: a name missing there was not the user's.
    for name in _LIBTPU_GUESSES:
        if name not in os.environ:
            os.unsetenv(name)


def build(config: ml_collections.ConfigDict, devices: list[Any]) -> tuple[Mesh, steps.Steps]:
    """The mesh and jitted steps `loop.train` would build on `devices`, after its cheap checks."""
    checked = config.copy_and_resolve_references()
    checked.data.train_files = checked.data.train_files or "-"  # The plan reads no data.
    PretrainingTask.check_config(checked)
    mesh = sharding.create_mesh(config.mesh, devices)
    rules = tuple(config.mesh.logical_axis_rules)
    validation.check_batch_layout(config, sharding.data_parallel_size(mesh, rules))
    return mesh, timing.build_train_steps(config, config.data.vocab_size, mesh)


def abstract_batch(
    config: ml_collections.ConfigDict, batch_size: int, mesh: Mesh
) -> dict[str, jax.ShapeDtypeStruct]:
    """The features of a global batch (the benchmark's synthetic batch), sharded like the loop's."""
    one = timing.synthetic_batch(
        1,
        config.data.max_seq_length,
        config.data.max_predictions_per_seq,
        config.data.vocab_size,
        packed=config.data.objective == "packed",
    )
    batch_sharding = sharding.batch_sharding(mesh, tuple(config.mesh.logical_axis_rules))
    return {
        k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype, sharding=batch_sharding)
        for k, v in one.items()
    }


def bytes_per_chip(abstract_tree: Any) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (its largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program's per-chip memory, cost and collectives."""

    name: str
    compile_time_s: float
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # Outputs written into donated arguments (counted once).
    temp_bytes: int
    code_bytes: int
    # Per chip, as the compiler counts them (remat's recomputation included); None where the
    # compiler has no cost model (XLA's GPU compiler reports none).
    flops: float | None
    bytes_accessed: float | None  # HBM traffic per chip by the compiler's cost model.
    collectives: dict[str, collectives.KindTotals]
    out_of_memory: str = ""  # The compiler's message when it refused the program.

    @property
    def total_bytes(self) -> int:
        return (
            self.argument_bytes + self.output_bytes - self.alias_bytes
            + self.temp_bytes + self.code_bytes
        )  # fmt: skip


def compile_program(
    name: str, jitted: Any, args: tuple, mesh: Mesh, hlo_dir: str | None = None
) -> Program:
    """Lowers and compiles `jitted(*args)` (abstract args); memory, cost and collectives.

    `hlo_dir`: also write the optimized HLO there as NAME.hlo.txt, to read the program."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA raises a plain runtime error for HBM overflow
        if not _OUT_OF_MEMORY.search(str(e)):
            raise
        empty = {kind: collectives.KindTotals() for kind in collectives.KINDS}
        message = " ".join(str(e).split())[:300]
        return Program(name, time.perf_counter() - start, 0, 0, 0, 0, 0, 0.0, 0.0, empty, message)
    elapsed = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
    slices = network_domains(mesh.devices.flat)
    text = compiled.as_text()
    if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        with open(os.path.join(hlo_dir, f"{name}.hlo.txt"), "w") as f:
            f.write(text)
    return Program(
        name=name,
        compile_time_s=elapsed,
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes),
        flops=float(cost["flops"]) if "flops" in cost else None,
        bytes_accessed=float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
        collectives=collectives.collectives(text, slices),
    )


def compile_steps(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    jitted: steps.Steps,
    *,
    with_eval: bool,
    hlo_dir: str | None = None,
) -> list[Program]:
    """The train step (and the eval step) on abstract batches of the configured sizes."""
    train_args = (jitted.abstract_state, abstract_batch(config, config.global_batch_size, mesh))
    programs = [compile_program("train_step", jitted.train_step, train_args, mesh, hlo_dir)]
    if with_eval:
        eval_args = (
            jitted.abstract_state.params,
            abstract_batch(config, config.eval_batch_size, mesh),
        )
        programs.append(compile_program("eval_step", jitted.eval_step, eval_args, mesh, hlo_dir))
    return programs
