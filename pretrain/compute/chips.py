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
not a vendor figure. On GPUs "ICI" is NVLink within a host (900 GB/s per H100 / H200) and "DCN"
the network between hosts: one 400 Gbit/s InfiniBand NIC per GPU, as in NVIDIA's DGX H100 / H200
datasheets (8 ConnectX-7 ports for the compute fabric).
"""

from __future__ import annotations

import dataclasses
import math
import re

from data_pipeline.errors import ConfigError

GiB = 1024**3
_DCN_PER_CHIP = 100e9 / 8 / 4  # 100 Gbit/s per host, 4 chips per host (assumption, see above).
_IB_PER_GPU = 400e9 / 8  # One 400 Gbit/s NIC per GPU (DGX H100 / H200).
GPUS_PER_HOST = 8  # GPU slices (`h100-16`) are hosts of 8 GPUs, as DGX / HGX boards.
# The share of a GPU's memory JAX takes: XLA_PYTHON_CLIENT_MEM_FRACTION as launch/slurm.sbatch
# and the device check set it (JAX's own default is 0.75). TPUs give XLA all their HBM.
GPU_MEMORY_FRACTION = 0.92


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
    # Plannable chips only (`pretrain.plan`): the name prefix users write (`v5p-8`, `h100-8`)
    # and the compiler: libtpu ("tpu") or the CUDA plugin ("cuda"). TPUs also give the
    # TensorCores the name counts per chip, the torus rank, and libtpu's chip config.
    slice_prefix: str | None = None
    platform: str = "tpu"
    cores_per_chip: int = 1
    torus_rank: int = 2
    chip_config: str = "default"

    @property
    def usable_bytes(self) -> float | None:
        """The memory a program may use: all HBM on TPUs, JAX's share of it on GPUs."""
        if self.hbm_bytes is None:
            return None
        return self.hbm_bytes * (GPU_MEMORY_FRACTION if self.platform == "cuda" else 1.0)

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
    Chip("H100 SXM", r"h100", 989e12, 494.7e12, 80e9, 3350e9, 900e9, _IB_PER_GPU, "h100",
         platform="cuda"),
    Chip("H200", r"h200", 989e12, 494.7e12, 141e9, 4800e9, 900e9, _IB_PER_GPU, "h200",
         platform="cuda"),  # H100 SXM's compute.
)  # fmt: skip

# Users also write the v5e's Cloud name.
_ALIASES = {"v5litepod": "v5e"}


def chip_for_kind(device_kind: str) -> Chip | None:
    """The table row of a device as JAX names it (`device.device_kind`); None where unknown."""
    kind = device_kind.strip().lower()
    return next((c for c in CHIPS if re.search(c.kind_pattern, kind)), None)


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice (or several), or GPU hosts, as users name them, and what the compile-only
    topologies (libtpu's, the CUDA plugin's) need."""

    name: str  # As given, e.g. 'v5p-8', 'h100-16'.
    chip: Chip
    chips_per_slice: int
    num_slices: int
    torus: tuple[int, ...]  # TPU: chips along each torus axis of one slice. GPU: (hosts, per host).

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def topology_name(self) -> str:
        """The compiler's name: libtpu's 'v5p:2x2x1'; the CUDA plugin's '1x2x8' (partitions x
        hosts x GPUs per host)."""
        if self.chip.platform == "cuda":
            return f"1x{self.torus[0]}x{self.torus[1]}"
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


def _gpu_hosts(name: str, chip: Chip, count: int, num_slices: int) -> Topology:
    """`h100-8`: one host of 8 GPUs; `h100-32`: 4 hosts; `h100-2`: one host of 2."""
    if num_slices != 1:
        raise ConfigError(
            f"--num_slices={num_slices}: GPU hosts form one network, not slices; name them all "
            f"in the count (e.g. {chip.slice_prefix}-32 for 4 hosts of {GPUS_PER_HOST})."
        )
    one_host = count <= GPUS_PER_HOST and count & (count - 1) == 0
    if count < 1 or not (one_host or count % GPUS_PER_HOST == 0):
        raise ConfigError(
            f"--topology={name!r}: {chip.slice_prefix} counts GPUs, 1, 2, 4, 8 on one host or a "
            f"multiple of {GPUS_PER_HOST} (hosts of {GPUS_PER_HOST})."
        )
    hosts = max(count // GPUS_PER_HOST, 1)
    return Topology(name, chip, count, 1, (hosts, count // hosts))


def parse_topology(name: str, num_slices: int = 1) -> Topology:
    """`v5p-8` (4 chips), `v5e-16`, `v6e-64`, `v4-32`, `h100-16` (2 hosts of 8) ... to a
    Topology; ConfigError otherwise."""
    known = ", ".join(f"{c.slice_prefix}-N" for c in CHIPS if c.slice_prefix)
    match = re.fullmatch(r"([vh]\d+[a-z]*)-(\d+)", name.strip().lower())
    prefix = _ALIASES.get(match.group(1), match.group(1)) if match else None
    chip = next((c for c in CHIPS if c.slice_prefix and c.slice_prefix == prefix), None)
    if chip is None:
        raise ConfigError(
            f"--topology={name!r} is not a TPU slice or GPU name; use one of {known}."
        )
    if num_slices < 1:
        raise ConfigError(f"--num_slices={num_slices} must be >= 1.")
    count = int(match.group(2))
    if chip.platform == "cuda":
        return _gpu_hosts(name, chip, count, num_slices)
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
