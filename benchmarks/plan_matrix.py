"""The pod-plan table of docs/running_on_a_pod.md: `pretrain.plan` for every pretraining config on
an 8-chip slice of each TPU generation and an 8-GPU H100 host, compiled on this CPU (no TPU
or GPU).

    python benchmarks/plan_matrix.py --out=/tmp/plans [--configs=bert_base,...] \
        [--slices=v4-16,v5e-8,v5p-16,v6e-8,h100-8]

Each row is one `python -m pretrain.plan --config=CONFIG --topology=SLICE --eval=false
--config.mesh.data=1 --config.mesh.fsdp=-1 [the row's overrides]` (every chip on FSDP, the
config's batch and recipe otherwise), run in its own process. Its train-step JSON line, with the
command and wall time, is appended to OUT/plans.jsonl; a rerun skips the rows already there, so
an interrupted matrix resumes. OUT/plans.md is the table. Full-size models take minutes each.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GiB = 1024**3

# name -> (config, overrides). ModernBERT's recipe batch (4608 x 1024) is for a large slice:
# 256 sequences here, as for BERT, so rows compare per chip at 32 sequences.
CONFIGS = {
    "smoke": ("configs/smoke.py", []),
    "modernbert_smoke": ("configs/modernbert_smoke.py", []),
    "modernbert_cpu": ("configs/modernbert_cpu.py", []),
    **{f"bert_{s}": (f"configs/bert.py:{s}", []) for s in ("tiny", "mini", "small", "medium")},
    "bert_base": ("configs/bert.py:base", []),
    "bert_large": ("configs/bert.py:large", []),
    "modernbert_base": ("configs/modernbert.py:base", ["--config.global_batch_size=256"]),
    "modernbert_large": ("configs/modernbert.py:large", ["--config.global_batch_size=256"]),
    # The same with the Splash kernel: no [B, heads, S, S] scores kept for the backward pass.
    **{
        f"modernbert_{s}_splash": (
            f"configs/modernbert.py:{s}",
            ["--config.global_batch_size=256", "--config.model.attention_impl=splash"],
        )
        for s in ("base", "large")
    },
}
SLICES = ("v4-16", "v5e-8", "v5p-16", "v6e-8", "h100-8")  # 8 chips of each kind.


def plan_row(name: str, topology: str, extra: list[str]) -> dict:
    """One `pretrain.plan` run: its last JSON line plus the command and its wall seconds."""
    config, overrides = CONFIGS[name]
    args = [
        sys.executable,
        "-m",
        "pretrain.plan",
        f"--config={config}",
        f"--topology={topology}",
        "--eval=false",
        "--config.mesh.data=1",
        "--config.mesh.fsdp=-1",
        *overrides,
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)  # fmt: skip
    seconds = round(time.perf_counter() - start, 1)
    command = " ".join(["python", *args[1:]])
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"name": name, "topology": topology, "error": last, "command": command,
                "wall_s": seconds}  # fmt: skip
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"name": name, **record, "command": command, "wall_s": seconds}


def _gib(value: float | None) -> str:
    return "" if value is None else f"{value / GiB:.2f}"


def _why_not(reason: str) -> str:
    """The compiler's out-of-memory message, as 'temporaries 40.11G > 30.75G free'."""
    m = re.search(r"temporaries \(([\d.]+G)\) exceeds available HBM \(([\d.]+G)\)", reason)
    return f"temporaries {m.group(1)} > {m.group(2)} free" if m else reason


def _collectives(r: dict) -> str:
    """all-gather / all-reduce / reduce-scatter GiB per chip (TPUs reduce-scatter by all-reduce)."""
    if not r["fits"]:
        return ""
    kinds = ("all-gather", "all-reduce", "reduce-scatter")
    return " / ".join(_gib(r["collective_bytes"].get(k, 0)) for k in kinds)


def _bound(r: dict) -> str:
    """Which floor bounds the step; on GPUs (no compiler counts) the compute floor is the model's
    FLOPs at peak, so a compute-bound GPU row's MFU bound is 100% by construction."""
    est = r.get("estimate") or {}
    from_model = est.get("floors_from") == "model FLOPs" and est.get("bound") == "compute"
    return f"{est.get('bound', '')}{' (model FLOPs)' if from_model else ''}"


def table(rows: list[dict]) -> str:
    lines = [
        "| config | slice | per chip | fits | memory per chip (GiB) | temporaries | "
        "all-gather / all-reduce / reduce-scatter (GiB) | step >= (ms) | bound | MFU <= | "
        "compile (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['topology']} | | error: {r['error']} |||||||")
            continue
        step, mfu = r["estimated_step_time_s"], r["estimated_mfu"]
        lines.append(
            f"| {r['name']} | {r['topology']} | {r['per_chip_batch']} x {r['seq_len']} | "
            f"{'yes' if r['fits'] else 'no: ' + _why_not(r['reason'])} | "
            f"{_gib(r['hbm_bytes_per_chip']) or '-'} of {r['hbm_capacity_bytes'] / GiB:.0f} | "
            f"{_gib(r['temp_bytes'])} | {_collectives(r)} | "
            f"{'' if step is None else f'{step * 1e3:.1f}'} | {_bound(r)} | "
            f"{'' if mfu is None else f'{mfu:.0%}'} | "
            f"{r.get('compile_time_s') or 0:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--configs", default=",".join(CONFIGS), help="names of CONFIGS")
    p.add_argument("--slices", default=",".join(SLICES))
    p.add_argument("--extra", default="", help="more --config.KEY=VALUE flags, space-separated")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "plans.jsonl"
    done = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    seen = {(r["name"], r["topology"]) for r in done}
    for name in a.configs.split(","):
        for topology in a.slices.split(","):
            if (name, topology) in seen:
                continue
            row = plan_row(name, topology, a.extra.split())
            print(json.dumps({k: row.get(k) for k in ("name", "topology", "fits", "wall_s")}),
                  flush=True)  # fmt: skip
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
    (a.out / "plans.md").write_text(table(done))
    print(table(done))


if __name__ == "__main__":
    main()
