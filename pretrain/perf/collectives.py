"""The collectives of a compiled (SPMD-partitioned) program, read from its HLO text.

Each collective instruction is counted once per execution: an instruction inside a `while` body
with a known trip count (gradient accumulation's scan) counts that many times. Its bytes are
its result's bytes on one chip (the scattered piece of a reduce-scatter, the gathered whole of
an all-gather). Async pairs (`all-gather-start` / `-done`) are counted at their `-done`, whose
result is the collective's output; the replica groups are read from the `-start`.

`traffic` is what one chip sends for a ring implementation over a group of n chips: all-reduce
2 (n - 1) / n x bytes, all-gather and all-to-all (n - 1) / n x bytes, reduce-scatter
(n - 1) x bytes, collective-permute the bytes. A collective whose group spans several slices
crosses the data-centre network (DCN); all of its traffic is then counted as DCN traffic (an
upper bound: a hierarchical reduction sends only a slice's share over DCN).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8,
                "c64": 8, "c128": 16}  # fmt: skip
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
# Across slices the TPU compiler sends through the megascale runtime (DCN) instead.
_MEGASCALE = re.compile(r'_xla_megascale_transfer_type="(\w+)"')
_MEGASCALE_KINDS = {"ALL_REDUCE": "all-reduce", "ALL_GATHER": "all-gather",
                    "REDUCE_SCATTER": "reduce-scatter", "ALL_TO_ALL": "all-to-all"}  # fmt: skip


@dataclasses.dataclass
class KindTotals:
    count: int = 0
    bytes: float = 0.0  # Result bytes per chip.
    traffic_bytes: float = 0.0  # Sent per chip over ICI (ring model, see the module docstring).
    dcn_traffic_bytes: float = 0.0  # The part whose group crosses slices.

    def add(self, times: int, nbytes: float, traffic: float, crosses_dcn: bool) -> None:
        self.count += times
        self.bytes += times * nbytes
        if crosses_dcn:
            self.dcn_traffic_bytes += times * traffic
        else:
            self.traffic_bytes += times * traffic


def _array_bytes(shape_text: str) -> float:
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape_text):
        width = _DTYPE_BYTES.get(dtype, _DTYPE_BYTES.get(dtype[:2], 4))
        total += width * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _groups(attributes: str, num_devices: int) -> list[list[int]]:
    """Replica groups (or permute pairs) as lists of partition ids; none given means all."""
    named = re.search(
        r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?"
        r"\s*\{([^}]*)\}",
        attributes,
    )
    if named:  # mesh['axis_0'=2,'axis_1'=4] {'axis_1'}: groups along the named axes.
        axes = re.findall(r"'([^']+)'=(\d+)", named.group(1))
        chosen = [i for i, (a, _) in enumerate(axes) if f"'{a}'" in named.group(4)]
        ids = np.arange(math.prod(int(n) for _, n in axes))
        if named.group(2):  # device_ids=([2,8]T(1,0)): the mesh's devices, an iota transposed.
            ids = ids.reshape([int(x) for x in named.group(2).split(",")])
            if named.group(3):
                ids = ids.transpose([int(x) for x in named.group(3).split(",")])
        ids = ids.reshape([int(n) for _, n in axes])
        rest = [i for i in range(len(axes)) if i not in chosen]
        grouped = ids.transpose(rest + chosen)
        return grouped.reshape(-1, math.prod(int(axes[i][1]) for i in chosen)).tolist()
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attributes)
    if iota:
        shape = [int(x) for x in iota.group(1).split(",")]
        ids = np.arange(math.prod(int(x) for x in iota.group(2).split(",")))
        ids = ids.reshape([int(x) for x in iota.group(2).split(",")])
        if iota.group(3):
            ids = ids.transpose([int(x) for x in iota.group(3).split(",")])
        return ids.reshape(shape).tolist()
    listed = re.search(
        r"(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)*)\}", attributes
    )
    if listed:
        groups = [
            [int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", listed[1])
        ]
        if any(groups):
            return groups
    return [list(range(num_devices))]


def _traffic(kind: str, nbytes: float, group_size: int) -> float:
    n = max(group_size, 1)
    if kind == "all-reduce":
        return 2 * (n - 1) / n * nbytes
    if kind == "reduce-scatter":
        return (n - 1) * nbytes
    if kind == "collective-permute":
        return nbytes
    return (n - 1) / n * nbytes


def _parse(hlo_text: str) -> tuple[dict[str, list[tuple[str, str, str, str]]], dict]:
    """{computation: [(name, result shape, opcode, rest)]} and {computation: [(callee, times)]}."""
    computations: dict[str, list[tuple[str, str, str, str]]] = {}
    calls: dict[str, list[tuple[str, int]]] = {}
    current = None
    for line in hlo_text.splitlines():
        if header := _COMPUTATION.match(line):
            current = header.group(1)
            computations[current], calls[current] = [], []
        elif current and (inst := _INSTRUCTION.match(line)):
            name, shape, opcode, rest = inst.groups()
            computations[current].append((name, shape, opcode, rest))
            if opcode in ("async-update", "async-done"):
                continue  # They name the computation their async-start already runs.
            trips = _TRIP_COUNT.search(rest)
            for role, callee in re.findall(r"\b(body|calls|condition|to_apply)=%?([\w.\-]+)", rest):
                times = int(trips.group(1)) if trips and role == "body" else 1
                calls[current].append((callee, times))
    return computations, calls


def _executions(computations: dict, calls: dict) -> dict[str, int]:
    """How often each computation runs per program execution (callers' counts times trips)."""
    called = {callee for edges in calls.values() for callee, _ in edges}
    runs = {name: 0 for name in computations}
    pending = [(name, 1) for name in computations if name not in called]
    while pending:
        name, times = pending.pop()
        if name not in runs:
            continue
        runs[name] += times
        pending.extend((callee, times * trips) for callee, trips in calls.get(name, ()))
    return runs


def collectives(hlo_text: str, slice_of_device: Sequence[int]) -> dict[str, KindTotals]:
    """Totals by kind (all of KINDS, zeros included) of a program's collectives.

    `slice_of_device[p]` is the slice of partition p (the mesh's flat device order). A program
    for several slices is one slice's (its partitions are one slice's chips); what crosses to
    the other slices are its megascale sends, counted as DCN traffic.
    """
    computations, calls = _parse(hlo_text)
    runs = _executions(computations, calls)
    starts = {name: rest for insts in computations.values() for name, _, _, rest in insts}
    num_slices = len(set(slice_of_device))
    partitions = re.search(r"num_partitions=(\d+)", hlo_text)
    if partitions and int(partitions.group(1)) != len(slice_of_device):
        slice_of_device = [0] * int(partitions.group(1))
    totals = {kind: KindTotals() for kind in KINDS}
    for computation, instructions in computations.items():
        for _, shape, opcode, rest in instructions:
            times = max(runs.get(computation, 1), 1)
            megascale = _MEGASCALE.search(rest) if opcode == "send" else None
            if megascale and megascale.group(1) in _MEGASCALE_KINDS:
                kind = _MEGASCALE_KINDS[megascale.group(1)]
                dtype, dims = _ARRAY.findall(shape)[0]
                nbytes = _array_bytes(f"{dtype}[{dims}]")
                totals[kind].add(times, nbytes, _traffic(kind, nbytes, num_slices), True)
                continue
            kind = opcode.removesuffix("-done")
            if kind not in KINDS or opcode.endswith("-start"):
                continue
            attributes = rest
            if opcode.endswith("-done"):  # The groups are on the -start, its operand.
                operand = re.search(r"%([\w.\-]+)", rest)
                attributes = starts.get(operand.group(1), "") if operand else ""
            groups = _groups(attributes, len(slice_of_device))
            nbytes = _array_bytes(shape)
            crosses = any(len({slice_of_device[p] for p in g}) > 1 for g in groups)
            traffic = _traffic(kind, nbytes, max(len(g) for g in groups))
            totals[kind].add(times, nbytes, traffic, crosses)
    return totals
