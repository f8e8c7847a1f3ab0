"""Float32 against int8, for fine-tuned classifiers: quality, size and CPU prediction speed.

    python benchmarks/compression.py --models=teacher=FT_DIR,student=FT_DIR2,... \
        --eval_file=EVAL.tsv --output_dir=OUT [--runs=3]

For each model: `pretrain.quantize` into OUT/<name>_int8 (kept when there), `pretrain.evaluate`
of both on EVAL.tsv (accuracy, macro-F1), the parameter bytes in memory and on disk, and the
examples/s of `pretrain.predict`'s work (`session.run_prediction`: the jitted eval step over the
first `--speed_examples` texts of EVAL.tsv, tokenizing and writing included, compiled before
timing) for all of them in turn in one process, `--runs` rounds: the median. Writes
OUT/compression.json and OUT/compression.md; evaluations are kept in OUT/evals/ for a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402 - after the platform is chosen.

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = sys.executable


def run(args: list[str]) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([PY, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def checkpoint_folder(workdir: Path) -> Path:
    """The folder a float workdir's model is read from (its best step), or Q_DIR's params."""
    from pretrain.inference import quantized
    from pretrain.training.workdir import finetuned_checkpoints

    if quantized.is_quantized(workdir):
        return workdir / quantized.PARAMS_DIR
    directory = finetuned_checkpoints(workdir)
    return max((p for p in directory.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def evaluate(models: dict[str, Path], eval_file: str, out: Path) -> list[dict]:
    """`pretrain.evaluate` of each model (kept in OUT/evals/ for a rerun) and its sizes."""
    rows = []
    for name, workdir in models.items():
        slug = name.replace(" ", "_")
        cached = out / "evals" / f"{slug}.json"
        if not cached.exists():
            stdout = run(["pretrain.evaluate", f"--workdir={workdir}", f"--eval_file={eval_file}",
                          f"--report_dir={out / 'reports' / slug}"])  # fmt: skip
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(stdout.splitlines()[-1] + "\n")
        row = {"model": name, "workdir": str(workdir), **json.loads(cached.read_text())}
        row["checkpoint_bytes"] = folder_bytes(checkpoint_folder(workdir))
        rows.append(row)
    return rows


def time_predictions(rows: list[dict], eval_file: str, out: Path, runs: int, examples: int) -> None:
    """Adds each model's parameter bytes and median examples/s of `run_prediction` on the first
    `examples` texts of `eval_file`, every model once per round."""
    from pretrain.inference import session as session_lib

    texts = out / "inputs.txt"
    lines = Path(eval_file).read_text(encoding="utf-8").splitlines()[:examples]
    texts.write_text("".join(line.split("\t", 1)[1] + "\n" for line in lines), encoding="utf-8")
    predictions = str(out / "predictions.jsonl")
    sessions = {r["model"]: session_lib.open_session(r["workdir"], mesh="1,1,1") for r in rows}
    for session in sessions.values():  # Compiles each model's step once, untimed.
        session_lib.run_prediction(session, str(texts), predictions)
    seconds: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            count = session_lib.run_prediction(session, str(texts), predictions)
            seconds[name].append(time.perf_counter() - start)
    for row in rows:
        row["param_bytes"] = sum(x.nbytes for x in jax.tree.leaves(sessions[row["model"]].params))
        row["examples_per_sec"] = count / statistics.median(seconds[row["model"]])
        row["runs_s"] = [round(s, 3) for s in seconds[row["model"]]]


def table(rows: list[dict]) -> str:
    header = ("| model | accuracy | macro-F1 | parameter MB | checkpoint MB | examples/s |\n"
              "|---|---|---|---|---|---|\n")  # fmt: skip
    return header + "".join(
        f"| {r['model']} | {r['eval_accuracy']:.4f} | {r['eval_macro_f1']:.4f} | "
        f"{r['param_bytes'] / 1e6:.2f} | {r['checkpoint_bytes'] / 1e6:.2f} | "
        f"{r['examples_per_sec']:.0f} |\n"
        for r in rows
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="name=FT_DIR,... (float32 fine-tuned)")
    p.add_argument("--eval_file", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--runs", type=int, default=3, help="timed rounds (0: evaluate only)")
    p.add_argument("--speed_examples", type=int, default=1000, help="texts timed per round")
    p.add_argument("--activations", default="float32", choices=["float32", "int8"])
    a = p.parse_args()
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Path] = {}
    for item in a.models.split(","):
        name, workdir = item.split("=", 1)
        quantized_dir = out / f"{name}_int8"
        if not quantized_dir.exists():
            run(["pretrain.quantize", f"--workdir={workdir}", f"--output={quantized_dir}",
                 f"--activations={a.activations}"])  # fmt: skip
        models[f"{name} float32"] = Path(workdir)
        models[f"{name} int8"] = quantized_dir
    rows = evaluate(models, a.eval_file, out)
    if a.runs:
        time_predictions(rows, a.eval_file, out, a.runs, a.speed_examples)
        (out / "compression.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "compression.md").write_text(table(rows))
        print(table(rows))
    else:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
