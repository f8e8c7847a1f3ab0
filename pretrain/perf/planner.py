"""The pod plan: a config's training programs compiled for a TPU slice, as records and a sweep.

`plan` compiles the train step (and the eval step) of one config on one topology and returns one
record per program (`RECORD_KEYS` and more); `sweep` varies the mesh, the remat policy and the
per-chip batch and recommends the fastest estimated point that fits. `pretrain/plan.py` is the
command line; `plan_table.py` prints the records.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from pretrain.compute import chips, flops
from pretrain.perf import compiled, roofline
from pretrain.training import sharding

# What every record has (the command's JSON contract).
RECORD_KEYS = (
    "topology", "chips", "mesh", "per_chip_batch", "fits", "hbm_bytes_per_chip", "argument_bytes",
    "temp_bytes", "output_bytes", "flops_per_chip", "model_flops_per_chip", "collective_bytes",
    "estimated_step_time_s", "estimated_mfu",
)  # fmt: skip


def _setup(
    config: ml_collections.ConfigDict, topology: chips.Topology, devices: list[Any]
) -> tuple[Any, Any, dict[str, Any]]:
    """Mesh, steps and the record fields every program of this config shares."""
    mesh, jitted = compiled.build(config, devices)
    rules = tuple(config.mesh.logical_axis_rules)
    data_parallel = sharding.data_parallel_size(mesh, rules)
    state_bytes = compiled.bytes_per_chip(jitted.abstract_state)
    common = {
        "topology": topology.name,
        "platform": topology.chip.platform,
        "compiler_topology": topology.topology_name,
        "num_slices": topology.num_slices,
        "chip": topology.chip.name,
        "chips": topology.chips,
        "mesh": dict(zip(sharding.MESH_AXES, mesh.devices.shape)),
        "data_parallel": data_parallel,
        "global_batch": config.global_batch_size,
        "per_chip_batch": config.global_batch_size // data_parallel,
        "seq_len": config.data.max_seq_length,
        "dtype": config.dtype,
        "remat_policy": config.model.remat_policy,
        "grad_accum_steps": config.grad_accum_steps,
        "hbm_capacity_bytes": topology.chip.usable_bytes,
        "state_bytes": state_bytes,
    }
    return mesh, jitted, common


def _model_flops_per_chip(config: ml_collections.ConfigDict, name: str, chips_: int) -> float:
    per_sequence = flops.config_train_flops(config, config.data.vocab_size).per_sequence
    if name == "eval_step":  # Forward only: a third of forward + backward.
        return per_sequence / 3 * config.eval_batch_size / chips_
    return per_sequence * config.global_batch_size / chips_


def _program_record(
    config: ml_collections.ConfigDict,
    chip: chips.Chip,
    common: dict[str, Any],
    program: compiled.Program,
) -> dict[str, Any]:
    model_flops = _model_flops_per_chip(config, program.name, common["chips"])
    if program.out_of_memory:  # The compiler gave up: no program to read memory or time from.
        return {"program": program.name, **common, **dict.fromkeys(RECORD_KEYS[5:], None),
                "compiled": False, "fits": False, "reason": program.out_of_memory,
                "collective_bytes": {},
                "model_flops_per_chip": model_flops,
                "compile_time_s": program.compile_time_s}  # fmt: skip
    used = program.total_bytes
    fits = not program.out_of_memory and used <= chip.usable_bytes
    reason = program.out_of_memory or (
        "" if fits else f"needs {used / chips.GiB:.2f} GiB of {chip.usable_bytes / chips.GiB:.0f}"
    )
    est = roofline.estimate(program, chip, config.dtype, model_flops)
    rows = config.global_batch_size if program.name == "train_step" else config.eval_batch_size
    return {
        "program": program.name,
        **common,
        "compiled": True,
        "fits": fits,
        "reason": reason,
        "hbm_bytes_per_chip": used,
        "headroom_bytes": chip.usable_bytes - used,
        "argument_bytes": program.argument_bytes,
        "output_bytes": program.output_bytes,
        "alias_bytes": program.alias_bytes,
        "temp_bytes": program.temp_bytes,
        "code_bytes": program.code_bytes,
        "flops_per_chip": program.flops,
        "model_flops_per_chip": model_flops,
        "flops_ratio": program.flops / model_flops if model_flops and program.flops else None,
        "bytes_accessed_per_chip": program.bytes_accessed,
        "collective_bytes": {k: t.bytes for k, t in program.collectives.items()},
        "collectives": {k: vars(t) for k, t in program.collectives.items()},
        "estimate": est.as_dict(),
        "estimated_step_time_s": est.step_time_s,
        "estimated_mfu": est.mfu,
        "estimated_tokens_per_sec": rows * common["seq_len"] / est.step_time_s
        if est.step_time_s
        else None,
        "compile_time_s": program.compile_time_s,
    }


def _state_only_record(chip: chips.Chip, common: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a config whose parameters and optimizer state alone exceed HBM (None if
    they fit): nothing is compiled, since no batch could fit."""
    if common["state_bytes"] <= chip.usable_bytes:
        return None
    empty = dict.fromkeys(RECORD_KEYS[5:], None)
    need = common["state_bytes"] / chips.GiB
    return {
        "program": "train_step",
        **common,
        **empty,
        "compiled": False,
        "fits": False,
        "reason": f"parameters and optimizer state alone need {need:.2f} GiB per chip, more "
        f"than the {chip.usable_bytes / chips.GiB:.0f} GiB of HBM: raise mesh.fsdp or mesh.tensor",
        "hbm_bytes_per_chip": common["state_bytes"],
        "collective_bytes": {},
    }


def plan(
    config: ml_collections.ConfigDict,
    topology: str,
    num_slices: int = 1,
    *,
    with_eval: bool = True,
    hlo_dir: str | None = None,
) -> list[dict[str, Any]]:
    """One record per compiled program of `config` on `topology`; the train step's is last.
    `hlo_dir`: where to write each program's optimized HLO text."""
    topo = chips.parse_topology(topology, num_slices)
    devices = compiled.compile_only_devices(topo)
    mesh, jitted, common = _setup(config, topo, devices)
    too_big = _state_only_record(topo.chip, common)
    if too_big is not None:
        return [too_big]
    programs = compiled.compile_steps(config, mesh, jitted, with_eval=with_eval, hlo_dir=hlo_dir)
    records = [_program_record(config, topo.chip, common, p) for p in programs]
    return sorted(records, key=lambda r: r["program"] == "train_step")


def candidate_meshes(chips_: int, num_heads: int, tensor_sizes: Sequence[int]) -> list[dict]:
    """(data, fsdp, tensor) over `chips_`: powers of two, tensor dividing the heads."""
    meshes = []
    for tensor in tensor_sizes:
        if chips_ % tensor or num_heads % tensor:
            continue
        fsdp = 1
        while fsdp * tensor <= chips_:
            if chips_ % (fsdp * tensor) == 0:
                meshes.append({"data": chips_ // (fsdp * tensor), "fsdp": fsdp, "tensor": tensor})
            fsdp *= 2
    return meshes


def _with(config: ml_collections.ConfigDict, mesh: dict, remat: str, batch: int):
    c = config.copy_and_resolve_references()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
    c.model.remat_policy = remat
    c.global_batch_size = batch * mesh["data"] * mesh["fsdp"]
    c.eval_batch_size = c.global_batch_size
    return c


def sweep(
    config: ml_collections.ConfigDict,
    topology: str,
    num_slices: int = 1,
    *,
    per_chip_batches: Sequence[int] = (8, 16, 32, 64, 128),
    remat_policies: Sequence[str] = ("none", "dots", "full"),
    tensor_sizes: Sequence[int] = (1, 2, 4),
    on_point: Callable[[dict[str, Any]], None] = lambda point: None,
) -> dict[str, Any]:
    """Every (mesh, remat, per-chip batch) point's train-step record, and the fastest that fits.

    Batches go up per (mesh, remat) until one does not fit (larger ones would not either); a
    mesh whose parameters and optimizer state alone exceed HBM is reported once, not compiled.
    `on_point` sees each record as it is made (a full-size sweep takes many minutes).
    """
    topo = chips.parse_topology(topology, num_slices)
    devices = compiled.compile_only_devices(topo)
    meshes = candidate_meshes(topo.chips, config.model.num_attention_heads, tensor_sizes)
    points = []
    for mesh, remat in itertools.product(meshes, remat_policies):
        for batch in sorted(b for b in per_chip_batches if b % config.grad_accum_steps == 0):
            c = _with(config, mesh, remat, batch)
            mesh_, jitted, common = _setup(c, topo, devices)
            point = _state_only_record(topo.chip, common)
            if point is None:
                (program,) = compiled.compile_steps(c, mesh_, jitted, with_eval=False)
                point = _program_record(c, topo.chip, common, program)
            points.append(point)
            on_point(point)
            if not point["fits"]:
                break
    return {"points": points, **_recommend(points, topo.chip)}


def _recommend(points: list[dict], chip: chips.Chip) -> dict[str, Any]:
    fitting = [p for p in points if p["fits"]]
    if fitting:
        return {"best": max(fitting, key=lambda p: p["estimated_tokens_per_sec"]), "reason": ""}
    if not points:
        return {"best": None, "reason": "no point to compile: every per-chip batch must be a "
                "multiple of grad_accum_steps, and a mesh must divide the chips"}  # fmt: skip
    compiled_points = [p for p in points if p["compiled"]]
    if not compiled_points:
        least = min(p["state_bytes"] for p in points) / chips.GiB
        hbm = chip.usable_bytes / chips.GiB
        why = (f"parameters and optimizer state alone need {least:.2f} GiB per chip on the "
               f"most sharded mesh, more than the {hbm:.0f} GiB of HBM")  # fmt: skip
        refused = [p["reason"] for p in points if p["hbm_bytes_per_chip"] is None]
        if refused:  # Compiled, and the compiler ran out of memory.
            why = f"the compiler ran out of HBM at every compiled point ({refused[0]})"
    else:
        least = min(compiled_points, key=lambda p: p["hbm_bytes_per_chip"])
        why = (f"activations do not fit even at the smallest per-chip batch: the best point "
               f"(mesh {least['mesh']}, remat {least['remat_policy']}, batch "
               f"{least['per_chip_batch']}) needs {least['hbm_bytes_per_chip'] / chips.GiB:.2f} "
               f"GiB of {chip.usable_bytes / chips.GiB:.0f}")  # fmt: skip
    return {"best": None, "reason": why}


def train_command(config_path: str, point: dict[str, Any]) -> str:
    """The `pretrain.train` command line of a sweep point."""
    mesh = point["mesh"]
    return (
        f"python -m pretrain.train --config={config_path} --workdir=DIR "
        f"--config.mesh.data={mesh['data']} --config.mesh.fsdp={mesh['fsdp']} "
        f"--config.mesh.tensor={mesh['tensor']} "
        f"--config.model.remat_policy={point['remat_policy']} "
        f"--config.global_batch_size={point['global_batch']}"
    )
