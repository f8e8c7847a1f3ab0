"""Helpers for tests that drive the command lines in subprocesses, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_corpus(path: Path, num_docs: int = 80, seed: int = 0) -> Path:
    """A small BERT-format corpus of random sentences (not the sample corpus: fast to tokenize)."""
    rng = np.random.default_rng(seed)
    words = [
        "".join(rng.choice(list("abcdefghiklmnoprstu"), rng.integers(2, 7))) for _ in range(400)
    ]
    docs = []
    for _ in range(num_docs):
        sentences = [
            " ".join(words[i % len(words)] for i in rng.zipf(1.3, rng.integers(5, 14))) + "."
            for _ in range(rng.integers(2, 7))
        ]
        docs.append("\n".join(sentences))
    path.write_text("\n\n".join(docs) + "\n")
    return path


def tiny_overrides(data_dir: Path, **extra: object) -> list[str]:
    """`--config.*` flags for a model and data small enough for a few-second CPU run."""
    train = data_dir / "train.txt"
    evals = data_dir / "eval.txt"
    if not train.exists():
        write_corpus(train, seed=0)
        write_corpus(evals, num_docs=20, seed=1)
    values = {
        "data.train_files": str(train),
        "data.eval_files": str(evals),
        "data.vocab_size": 300,
        "data.max_seq_length": 32,
        "data.max_predictions_per_seq": 5,
        "model.num_hidden_layers": 1,
        "model.hidden_size": 32,
        "model.num_attention_heads": 2,
        "model.intermediate_size": 64,
        "model.max_position_embeddings": 32,
        "model.hidden_dropout_prob": 0.0,
        "model.attention_probs_dropout_prob": 0.0,
        "global_batch_size": 8,
        "eval_batch_size": 8,
        "max_eval_batches": 2,
        "num_train_steps": 6,
        "log_every_steps": 1,
        "eval_every_steps": 3,
        "checkpoint_every_steps": 3,
        "dtype": "float32",
        "optimizer.learning_rate": 1e-3,
        "optimizer.warmup_steps": 2,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"--config.{k}={v}" for k, v in values.items()]


def cli_env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO)
    return env


def run_module(
    module: str, args: list[str], devices: int = 1, timeout: int = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Runs `python -m module args...` from the repo root; on failure shows its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=cli_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def read_metrics(workdir: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(train rows by step, eval rows by step) of WORKDIR/metrics.jsonl."""
    train, evals = {}, {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        (evals if "eval_mlm_loss" in row else train)[row["step"]] = row
    return train, evals
