"""Plans a pod run on any machine: compiles the training programs for a TPU slice or GPU hosts,
no TPU or GPU needed.

    python -m pretrain.plan --config=configs/<name>.py --topology=v5p-64 [--num_slices=N] \
        [--sweep] [--config.KEY=VALUE ...]
    python -m pretrain.plan --config=configs/<name>.py --topology=h100-16   # 2 hosts of 8

Prints a readable table and one JSON line per compiled program (train step, eval step); the last
line of stdout is the train step's JSON object (`perf/planner.py`'s RECORD_KEYS and more). With
`--sweep`: one row and one JSON line per (mesh, remat policy, per-chip batch) point, then the
fastest estimated point that fits, with its `pretrain.train` command line, as the last line.
Needs the TPU compiler, `pip install -e ".[tpu]"`, or the CUDA one, `pip install -e ".[gpu-plan]"`.
See docs/running_on_a_pod.md.
"""

import json
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from pretrain import command
from pretrain.perf import plan_table, planner

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pretraining config file.", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU slice as Cloud names it (v5p-8, v5e-16 ...) or GPUs (h100-8, h200-16)."
)
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-centre network.")
_EVAL = flags.DEFINE_bool("eval", True, "Compile the eval step too.")
_HLO_DIR = flags.DEFINE_string("hlo_dir", None, "Write each program's optimized HLO text here.")
_SWEEP = flags.DEFINE_bool("sweep", False, "Sweep meshes, remat policies and per-chip batches.")
_BATCHES = flags.DEFINE_list("sweep_batches", ["8", "16", "32", "64", "128"], "Per-chip batches.")
_REMAT = flags.DEFINE_list("sweep_remat", ["none", "dots", "full"], "Remat policies to sweep.")
_TENSOR = flags.DEFINE_list("sweep_tensor", ["1", "2", "4"], "Tensor-parallel sizes to sweep.")
flags.mark_flags_as_required(["config", "topology"])

# What a sweep point sets; the user's other --config overrides go into its command line.
_SWEPT = ("--config.mesh.", "--config.model.remat_policy", "--config.global_batch_size")


def _print_json(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _plan() -> None:
    records = planner.plan(
        _CONFIG.value,
        _TOPOLOGY.value,
        _NUM_SLICES.value,
        with_eval=_EVAL.value,
        hlo_dir=_HLO_DIR.value,
    )
    for record in records:
        print(plan_table.program_table(record), flush=True)
    for record in records:
        _print_json(record)


def _progress(point: dict) -> None:
    """A sweep point on stderr as soon as it is compiled; stdout keeps the table and JSON lines."""
    print(plan_table.sweep_row(point), file=sys.stderr, flush=True)


def _sweep() -> None:
    print(plan_table.SWEEP_HEADER, file=sys.stderr, flush=True)
    result = planner.sweep(
        _CONFIG.value,
        _TOPOLOGY.value,
        _NUM_SLICES.value,
        per_chip_batches=[int(b) for b in _BATCHES.value],
        remat_policies=_REMAT.value,
        tensor_sizes=[int(t) for t in _TENSOR.value],
        on_point=_progress,
    )
    print(plan_table.sweep_table(result["points"]), flush=True)
    for point in result["points"]:
        _print_json(point)
    best = result["best"]
    if best is None:
        print(f"No point fits: {result['reason']}.", flush=True)
        _print_json(
            {"fits": False, "reason": result["reason"], "sweep_points": len(result["points"])}
        )
        return
    path = FLAGS["config"].serialize().partition("=")[2]
    others = [a for a in sys.argv[1:] if a.startswith("--config.") and not a.startswith(_SWEPT)]
    line = " ".join([planner.train_command(path, best), *others])
    print(f"Fastest estimated point that fits:\n{plan_table.program_table(best)}\n  {line}")
    _print_json({**best, "recommended_command": line, "sweep_points": len(result["points"])})


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    command.start(argv, takes_config=True)
    # The plan runs nothing: the host's CPU backend is enough, and never a TPU this machine has.
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    command.run_user_errors_as_one_line(_sweep if _SWEEP.value else _plan)


if __name__ == "__main__":
    app.run(main, flags_parser=command.parse_flags)
