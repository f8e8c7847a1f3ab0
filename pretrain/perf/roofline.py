"""A roofline estimate of a compiled program's step time, from the program and the chip alone.

Three floors, each a lower bound on the step time of one chip:
  compute      the compiler's FLOPs per chip at the chip's peak (`chips.py`);
  memory       the compiler's bytes accessed (its HBM traffic model) at the HBM bandwidth;
  collectives  ring traffic per chip (`collectives.py`) at the chip's ICI bandwidth, and the part
               whose groups span slices at the DCN bandwidth.
The estimate is the largest of them (perfect overlap); `serial_s` adds the collectives to the
larger of compute and memory (no overlap at all). A real step lies between, and above both when
the kernels run below peak (small matmuls, attention at short sequences, host stalls), which
the estimate cannot know. The MFU bound is the model's FLOPs (`flops.py`) over the estimate.
Where the compiler has no cost model (XLA's GPU compiler), the compute floor takes the model's
FLOPs and there is no memory floor: the estimate is then only a compute and collectives bound.
"""

from __future__ import annotations

import dataclasses

from pretrain.compute.chips import Chip
from pretrain.perf.compiled import Program


@dataclasses.dataclass(frozen=True)
class Estimate:
    compute_s: float
    memory_s: float
    ici_s: float
    dcn_s: float
    step_time_s: float
    serial_s: float
    bound: str  # Which floor sets step_time_s.
    mfu: float
    floors_from: str  # "compiler", or "model FLOPs" where the compiler counts no cost.

    def as_dict(self) -> dict[str, float | str]:
        return dataclasses.asdict(self)


def estimate(program: Program, chip: Chip, dtype: str, model_flops_per_chip: float) -> Estimate:
    """The roofline of `program` on `chip` (all figures per chip, per step)."""
    peak = chip.peak_flops(dtype)
    ici = sum(t.traffic_bytes for t in program.collectives.values())
    dcn = sum(t.dcn_traffic_bytes for t in program.collectives.values())
    counted = program.flops is not None
    floors = {
        "compute": (program.flops if counted else model_flops_per_chip) / peak,
        "memory": (program.bytes_accessed or 0.0) / chip.hbm_bandwidth,
        "ici": ici / chip.ici_bandwidth,
        "dcn": dcn / chip.dcn_bandwidth,
    }
    bound = max(floors, key=floors.get)
    step = floors[bound]
    return Estimate(
        compute_s=floors["compute"],
        memory_s=floors["memory"],
        ici_s=floors["ici"],
        dcn_s=floors["dcn"],
        step_time_s=step,
        serial_s=max(floors["compute"], floors["memory"]) + floors["ici"] + floors["dcn"],
        bound=bound,
        mfu=model_flops_per_chip / (step * peak) if step > 0 else 0.0,
        floors_from="compiler" if counted else "model FLOPs",
    )
