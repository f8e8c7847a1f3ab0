"""The one table of accelerator figures, and TPU slice names as users write them.

Every figure here is a vendor figure per chip (one JAX device: TPU v4 and later run both
TensorCores of a chip as one "megacore" device). MFU (`compute/flops.py`), the benchmark and the pod
plan (`perf/roofline.py`) read them from here and nowhere else.

Sources (cloud.google.com/tpu/docs/<gen> pages, as collected in ../shared/REFERENCE.md):
  TPU v4   docs/v4:  32 GiB HBM2, 1 228 GB/s, 275 TFLOP/s bf16, ICI 2 400 Gbit/s
  TPU v5e  docs/v5e: 16 GiB HBM2, 819 GB/s, 197 TFLOP/s bf16, ICI 1 600 Gbit/s
  TPU v5p  docs/v5p: 95 GiB HBM2e, 2 765 GB/s, 459 TFLOP/s bf16, ICI 4 800 Gbit/s
  TPU v6e  docs/v6e: 32 GiB HBM, 1 640 GB/s, 918 TFLOP/s bf16, ICI 3 584 Gbit/s
  A100 / H100 / H200: NVIDIA datasheets (dense, no sparsity); float32 at JAX's default matmul
  precision is TF32 on tensor cores, half the bf16 rate.
ICI figures are the chip's total over all its links; a collective along one mesh axis uses only
some of them, so collective times from these figures are lower bounds. DCN (between slices) is
"tens of Gbit/s per host" in REFERENCE.md: we take 100 Gbit/s per host of 4 chips, an assumption,
not a vendor figure.
"""

from __future__ import annotations

import dataclasses
import math
import re

from data_pipeline.errors import ConfigError

GiB = 1024**3
_DCN_PER_CHIP = 100e9 / 8 / 4  # 100 Gbit/s per host, 4 chips per host (assumption, see above).


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator generation; bandwidths in bytes/s, peaks in FLOP/s, all per chip."""

    name: str
    kind_pattern: str  # Regex on `device.device_kind`, lower-cased; first match in CHIPS wins.
    bf16_flops: float
    fp32_flops: float  # At JAX's default matmul precision.
    hbm_bytes: float | None = None
    hbm_bandwidth: float | None = None
    ici_bandwidth: float | None = None
    dcn_bandwidth: float | None = None
    # TPU slices only: the name prefix users write, TensorCores the name counts per chip, the
    # torus rank, and the chip config libtpu's compile-only topologies want.
    slice_prefix: str | None = None
    cores_per_chip: int = 1
    torus_rank: int = 2
    chip_config: str = "default"

    def peak_flops(self, dtype: str) -> float:
        return self.bf16_flops if dtype == "bfloat16" else self.fp32_flops


CHIPS: tuple[Chip, ...] = (
    Chip("TPU v4", r"^tpu v4$", 275e12, 275e12, 32 * GiB, 1228e9, 2400e9 / 8, _DCN_PER_CHIP,
         "v4", cores_per_chip=2, torus_rank=3, chip_config="megacore"),
    Chip("TPU v5e", r"^tpu v5 ?(lite|e)$", 197e12, 197e12, 16 * GiB, 819e9, 1600e9 / 8,
         _DCN_PER_CHIP, "v5e"),  # JAX reports v5e as 'TPU v5 lite'.
    Chip("TPU v5p", r"^tpu v5p?$", 459e12, 459e12, 95 * GiB, 2765e9, 4800e9 / 8, _DCN_PER_CHIP,
         "v5p", cores_per_chip=2, torus_rank=3),  # JAX reports v5p as 'TPU v5'.
    Chip("TPU v6e", r"^tpu v6 ?(lite|e)$", 918e12, 918e12, 32 * GiB, 1640e9, 3584e9 / 8,
         _DCN_PER_CHIP, "v6e"),  # Trillium, reported as 'TPU v6 lite'.
    Chip("A100", r"a100", 312e12, 156e12, 80e9, 2039e9, 600e9),  # SXM and PCIe: same peak.
    Chip("H100 PCIe", r"h100.*pcie", 756e12, 378e12, 80e9, 2000e9, 600e9),
    Chip("H100 NVL", r"h100.*nvl", 835e12, 418e12, 94e9, 3900e9, 600e9),
    Chip("H100 SXM", r"h100", 989e12, 494.7e12, 80e9, 3350e9, 900e9),
    Chip("H200", r"h200", 989e12, 494.7e12, 141e9, 4800e9, 900e9),  # H100 SXM's compute.
)  # fmt: skip

# Users also write the v5e's Cloud name.
_ALIASES = {"v5litepod": "v5e"}


def chip_for_kind(device_kind: str) -> Chip | None:
    """The table row of a device as JAX names it (`device.device_kind`); None where unknown."""
    kind = device_kind.strip().lower()
    return next((c for c in CHIPS if re.search(c.kind_pattern, kind)), None)


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice (or several) as users name it, and what libtpu's compile-only API needs."""

    name: str  # As given, e.g. 'v5p-8'.
    chip: Chip
    chips_per_slice: int
    num_slices: int
    torus: tuple[int, ...]  # Chips along each torus axis of one slice.

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def topology_name(self) -> str:
        """libtpu's name, e.g. 'v5p:2x2x1'."""
        return f"{self.chip.slice_prefix}:{'x'.join(map(str, self.torus))}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """Hosts of 4 chips (2x2), fewer on smaller slices."""
        padded = (*self.torus, 1, 1)[:3]
        return tuple(min(b, t) for b, t in zip((2, 2, 1), padded))


def _torus(chips: int, rank: int) -> tuple[int, ...]:
    """Cloud TPU's slice shapes: powers of two, as even as possible (v5e-32 4x8, v5p-16 2x2x4)."""
    exponent = int(math.log2(chips))
    if rank == 3 and exponent == 2:
        return (2, 2, 1)
    exponents = [exponent // rank + (i < exponent % rank) for i in range(rank)]
    return tuple(2**e for e in sorted(exponents))


def parse_topology(name: str, num_slices: int = 1) -> Topology:
    """`v5p-8` (4 chips), `v5e-16`, `v6e-64`, `v4-32` ... to a Topology; ConfigError otherwise."""
    known = ", ".join(f"{c.slice_prefix}-N" for c in CHIPS if c.slice_prefix)
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
    prefix = _ALIASES.get(match.group(1), match.group(1)) if match else None
    chip = next((c for c in CHIPS if c.slice_prefix and c.slice_prefix == prefix), None)
    if chip is None:
        raise ConfigError(f"--topology={name!r} is not a TPU slice name; use one of {known}.")
    if num_slices < 1:
        raise ConfigError(f"--num_slices={num_slices} must be >= 1.")
    count = int(match.group(2))
    chips, rest = divmod(count, chip.cores_per_chip)
    smallest = 4 if chip.torus_rank == 3 else 1
    if rest or chips < smallest or chips & (chips - 1):
        unit = "TensorCores (2 per chip)" if chip.cores_per_chip == 2 else "chips"
        raise ConfigError(
            f"--topology={name!r}: {chip.slice_prefix} slices count {unit}; the slices are "
            f"powers of two of at least {smallest * chip.cores_per_chip} "
            f"(e.g. {chip.slice_prefix}-{8 if chip.cores_per_chip == 2 else 4})."
        )
    return Topology(name, chip, chips, num_slices, _torus(chips, chip.torus_rank))
