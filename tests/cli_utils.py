"""Helpers for tests that drive the command lines in subprocesses, as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
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


def tiny_values(data_dir: Path, **extra: object) -> dict[str, object]:
    """Config values (dotted keys) for a model and data small enough for a few-second CPU run.

    `extra` overrides them; write `model__hidden_size` for `model.hidden_size`.
    """
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
    return values


def tiny_overrides(data_dir: Path, **extra: object) -> list[str]:
    """`--config.*` flags of `tiny_values`."""
    return [f"--config.{k}={v}" for k, v in tiny_values(data_dir, **extra).items()]


def tiny_config(data_dir: Path, **extra: object):
    """configs/smoke.py with `tiny_values` set, as the ConfigDict the CLI would build."""
    from configs import smoke

    config = smoke.get_config()
    for key, value in tiny_values(data_dir, **extra).items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def cli_env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO)
    return env


def run_module(
    module: str,
    args: list[str],
    devices: int = 1,
    timeout: int = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    wrapper: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """Runs `python -m module args...` from the repo root; on failure shows its stderr.

    `env` adds variables to `cli_env(devices)`; `preexec_fn` runs in the child before it starts
    (e.g. to set a resource limit); `wrapper` is a command line that runs python (e.g. setpriv).
    """
    proc = subprocess.run(
        [*(wrapper or []), sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**cli_env(devices), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
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


# With JAX_LOG_COMPILES=1 (or jax.log_compiles()) JAX logs every compilation, persistent-cache
# hits included; a bad input must fail before the model's.
LOG_COMPILES = {"JAX_LOG_COMPILES": "1"}
MODEL_COMPILE = re.compile(r"Compiling jit\((init_train_state|train_step|eval_step)\)")


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Checks a CLI run failed as a user error should; returns its `error:` line.

    Exit code 2, the last stderr line is `error: ...` and contains every fragment, no traceback
    anywhere, no training step taken, and (when run with LOG_COMPILES) no model compiled.
    """
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not re.search(r"^step \d+/", proc.stderr, re.M), "a training step ran"
    assert not MODEL_COMPILE.search(proc.stderr), "the model was compiled before failing"
    return lines[-1]


def run_in_process(fn: Callable[[], object], capsys) -> tuple[int, list[str]]:
    """Runs `fn` as a command line runs its library call; (exit code, stderr lines).

    Exit code 2 is a user error reported as one `error:` line; any other exception propagates.
    """
    from pretrain import command

    code = 0
    try:
        command.run_user_errors_as_one_line(fn)
    except SystemExit as e:
        code = int(e.code)
    return code, capsys.readouterr().err.strip().splitlines()
