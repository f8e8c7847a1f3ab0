"""The device check's driver (benchmarks/device_check.sh runs it; see docs/performance.md).

On an accelerator: the device, then `pretrain.benchmark` for BERT-base and ModernBERT-base in
bfloat16 at sequence 128 and 512, attention `xla` and `cudnn`, remat `none` and `dots`, each at
the largest global batch that fits (a doubling search on the first combination of a model and
length, out-of-memory caught; the others start from its batch and halve on out-of-memory), every
attention path on every mask kind (benchmarks/attention_paths.py), then a one-minute pretraining
run of configs/mini.py on the sample corpus, stopped by SIGTERM (which saves and exits 0).
`--dry_run` runs the same sequence on the CPU with tiny shapes (cuDNN lines are reported as
skipped there; the Pallas kernels run interpreted). Every result is one JSON line on stdout and
in OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = {"bert_base": "configs/base.py", "modernbert_base": "configs/modernbert_base.py"}
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")
# Tiny shapes for --dry_run: every combination compiles and runs in seconds on a CPU.
DRY_MODEL = [
    "--config.model.num_hidden_layers=2", "--config.model.hidden_size=32",
    "--config.model.num_attention_heads=2", "--config.model.intermediate_size=64",
    "--config.data.vocab_size=512", "--config.benchmark.input_batches=2",
]  # fmt: skip


class Report:
    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.jsonl"
        self.path.write_text("")

    def line(self, **row) -> dict:
        text = json.dumps(row)
        print(text, flush=True)
        with self.path.open("a") as f:
            f.write(text + "\n")
        return row


def _run(args: list[str], timeout: int) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, "", f"timed out after {timeout}s"
    return proc.returncode, proc.stdout, proc.stderr


def benchmark(a, model: str, seq: int, attention: str, remat: str, batch: int,
              tokenizer: Path) -> dict:  # fmt: skip
    """One `pretrain.benchmark` run: its JSON result, or {'status': 'oom' | 'error', ...}."""
    modern = model.startswith("modernbert")
    predictions = max(round((0.3 if modern else 0.15) * seq), 1) + (2 if modern else 0)
    flags = [
        "-m", "pretrain.benchmark", f"--config={MODELS[model]}", f"--workdir={a.out / 'cache'}",
        f"--config.global_batch_size={batch}", f"--config.data.max_seq_length={seq}",
        f"--config.data.max_predictions_per_seq={min(predictions, seq - 3)}",
        f"--config.model.attention_impl={attention}", f"--config.model.remat_policy={remat}",
        # Fused kernels cannot apply attention dropout (the einsum path would run instead);
        # the modern configs have none, and BERT's 0.1 is turned off for the comparison.
        "--config.model.attention_probs_dropout_prob=0.0",
        f"--config.dtype={'float32' if a.dry_run else 'bfloat16'}",
        "--config.data.train_files=data/sample/train.txt",
        f"--config.data.tokenizer_model={tokenizer}",
        f"--config.benchmark.timed_steps={2 if a.dry_run else 10}",
        f"--config.benchmark.warmup_steps={1 if a.dry_run else 3}",
        *(DRY_MODEL if a.dry_run else []),
    ]  # fmt: skip
    code, out, err = _run(flags, timeout=120 if a.dry_run else 420)
    if code == 0:
        return {"status": "ok", **json.loads(out.strip().splitlines()[-1])}
    text = err + out
    status = "oom" if any(m in text for m in OOM_MARKERS) else "error"
    return {"status": status, "error": (text.strip().splitlines() or ["?"])[-1][:300]}


def sweep(a, report: Report, tokenizer: Path) -> None:
    seqs = (16,) if a.dry_run else (128, 512)  # One length is enough to run every line.
    for model in MODELS:
        for seq in seqs:
            start = (4 if a.dry_run else (256 if seq == 128 else 64)) // (
                2 if model.startswith("modernbert") and not a.dry_run else 1
            )  # fmt: skip
            cap = start if a.dry_run else start * 8  # A dry run: one step of the search.
            batch = None
            for attention in ("xla", "cudnn"):
                for remat in ("none", "dots"):
                    common = dict(check="benchmark", model=model, seq=seq, attention=attention,
                                  remat=remat)  # fmt: skip
                    if attention == "cudnn" and a.dry_run:
                        report.line(**common, status="skipped", reason="cuDNN needs a GPU")
                        continue
                    if batch is None:  # The first combination: doubling search.
                        batch, best = start, None
                        while batch <= cap:
                            result = benchmark(a, model, seq, attention, remat, batch, tokenizer)
                            if result["status"] != "ok":
                                break
                            best, batch = result, batch * 2
                        batch = max(batch // 2, 1) if best else start
                        report.line(**common, batch=batch, **(best or result))
                        continue
                    size = batch
                    while True:  # The others: the search's batch, halved on out-of-memory.
                        result = benchmark(a, model, seq, attention, remat, size, tokenizer)
                        if result["status"] != "oom" or size == 1:
                            break
                        size //= 2
                    report.line(**common, batch=size, **result)


def attention_paths(a, report: Report) -> None:
    """benchmarks/attention_paths.py: each attention path x mask kind, forward and backward, at
    ModernBERT-base's heads (sequence 1024 and 8192; a dry run: 256, two masks, interpreted)."""
    size = (
        ["--dry_run", "--masks", "documents", "documents+window"]
        if a.dry_run
        else ["--seq", "1024", "8192"]
    )
    code, out, err = _run(["benchmarks/attention_paths.py", *size], timeout=300)
    for line in out.splitlines():
        if line.startswith("{"):
            report.line(**json.loads(line))
    if code != 0:
        last = (err.strip().splitlines() or ["?"])[-1][:300]
        report.line(check="attention", status="error", error=last)


def pretrain_minute(a, report: Report, tokenizer: Path) -> None:
    """configs/mini.py on the sample corpus for `seconds` after its first step, then SIGTERM."""
    workdir = a.out / "mini"
    seconds = 5 if a.dry_run else 60
    flags = [
        "-m", "pretrain.train", "--config=configs/mini.py", f"--workdir={workdir}",
        "--config.data.train_files=data/sample/train.txt",
        "--config.data.eval_files=", f"--config.data.tokenizer_model={tokenizer}",
        "--config.log_every_steps=10", "--config.checkpoint_every_steps=100000",
        f"--config.dtype={'float32' if a.dry_run else 'bfloat16'}",
        f"--config.global_batch_size={16 if a.dry_run else 256}",
        *(["--config.data.max_seq_length=32", "--config.data.max_predictions_per_seq=5",
           "--config.optimizer.warmup_steps=5"] + DRY_MODEL[:4] if a.dry_run else []),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = workdir / "metrics.jsonl"
    # The window opens at the first step's row: start-up and compile take what the machine's
    # load makes them (up to 5 minutes), and must not eat the training time being measured.
    deadline, training = start + 300, False
    while proc.poll() is None and time.time() < deadline:
        if not training and metrics.exists() and metrics.stat().st_size:
            deadline, training = time.time() + seconds, True
        time.sleep(0.5)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # Saves the current step and exits 0.
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    rows = [r for r in rows if "loss" in r]
    rates = sorted(r["tokens_per_sec"] for r in rows[1:] if "tokens_per_sec" in r)
    report.line(
        check="pretrain_1min", exit_code=proc.returncode, seconds=round(time.time() - start, 1),
        steps=rows[-1]["step"] if rows else 0,
        first_loss=rows[0]["loss"] if rows else None, last_loss=rows[-1]["loss"] if rows else None,
        loss_fell=bool(rows) and rows[-1]["loss"] < rows[0]["loss"],
        tokens_per_sec=rates[len(rates) // 2] if rates else None,
        error=None if proc.returncode == 0 else err.strip().splitlines()[-1:],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="default: a new temporary folder")
    a = parser.parse_args()
    a.out = (a.out or Path(tempfile.mkdtemp(prefix="device_check_"))).resolve()
    try:
        check(a)
    finally:
        print(f"device check outputs: {a.out}", file=sys.stderr)


def check(a: argparse.Namespace) -> None:
    """The whole sequence, each result one line on stdout and in OUT/results.jsonl."""
    report = Report(a.out)
    code, out, err = _run(
        [
            "-c",
            "import jax, json; d = jax.devices()[0]; print(json.dumps("
            "{'platform': d.platform, 'device_kind': d.device_kind, "
            "'devices': jax.device_count(), 'jax': jax.__version__}))",
        ],
        300,
    )
    device = json.loads(out.strip().splitlines()[-1]) if code == 0 else {"error": err[-300:]}
    report.line(check="device", dry_run=a.dry_run, **device)
    if not a.dry_run and device.get("platform") not in ("gpu", "cuda", "tpu"):
        report.line(check="abort", reason="no accelerator visible to JAX; use --dry_run on CPU")
        sys.exit(1)
    tokenizer = a.out / "sp.model"
    if not tokenizer.exists():
        code, _, err = _run(["-m", "data_pipeline.tokenizer", "--input=data/sample/train.txt",
                             f"--vocab_size={512 if a.dry_run else 8000}",
                             f"--output_prefix={a.out / 'sp'}"], 600)  # fmt: skip
        if code != 0:
            report.line(check="tokenizer", status="error", error=err[-300:])
            sys.exit(1)
    sweep(a, report, tokenizer)
    attention_paths(a, report)
    pretrain_minute(a, report, tokenizer)


if __name__ == "__main__":
    main()
