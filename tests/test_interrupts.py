"""Ctrl-C and a second writer through `python -m pretrain.train`, with the hooked CLI and the
9-step reference run of tests/test_faults.py."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli_utils import REPO, run_module
from tests.test_faults import (
    _HOOKED_CLI,
    STEPS,
    _assert_rows_match,
    _complete_steps,
    _flags,
    _hook_env,
    _resumed_at,
    _tree_digest,
    run_reference,
)

pytestmark = pytest.mark.slow  # Every test here drives the command line in subprocesses.


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    return run_reference(tmp_path_factory)


def _start(hook: str, args: list[str], tmp_path: Path, log_name: str) -> tuple:
    """Starts the hooked CLI in the background: (process, its stderr file)."""
    log = tmp_path / log_name
    proc = subprocess.Popen(
        [*_HOOKED_CLI, *args],
        cwd=REPO,
        env=_hook_env(hook, tmp_path / "marker"),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    return proc, log


def _wait_for(condition, proc, log: Path, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _train_steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [row["step"] for row in rows if "loss" in row]


def test_ctrl_c_saves_the_current_step_exits_0_and_resumes_exactly(reference, tmp_path):
    data, reference_dir = reference
    workdir = tmp_path / "run"
    args = _flags(data, workdir)
    proc, log = _start("slow_batches:0.4", args, tmp_path, "first.txt")
    _wait_for(lambda: any(s >= 4 for s in _train_steps(workdir)), proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    stderr = log.read_text()
    assert "Ctrl-C: saving the current step" in stderr and "Traceback" not in stderr
    stopped_at = max(_train_steps(workdir))
    assert 4 <= stopped_at < STEPS and _complete_steps(workdir)[-1] == stopped_at

    proc = run_module("pretrain.train", args)
    assert _resumed_at(proc.stderr) == stopped_at
    _assert_rows_match(workdir, reference_dir)


def test_a_second_ctrl_c_while_saving_stops_at_once_keeping_the_last_checkpoint(
    reference, tmp_path
):
    data, _ = reference
    workdir = tmp_path / "run"
    # Step 6's save never commits (the hook blocks orbax's rename), so the Ctrl-C save of a later
    # step waits behind it until the second Ctrl-C.
    proc, log = _start("pause_in_save:6;slow_batches:0.3", _flags(data, workdir), tmp_path, "e.txt")
    _wait_for(lambda: 7 in _train_steps(workdir), proc, log)
    before = _tree_digest(workdir / "checkpoints" / "3")
    proc.send_signal(signal.SIGINT)
    _wait_for(lambda: "Ctrl-C: saving" in log.read_text(), proc, log)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert "Second Ctrl-C: stopping at once" in log.read_text()
    assert _complete_steps(workdir) == [3]
    assert _tree_digest(workdir / "checkpoints" / "3") == before


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(reference, tmp_path):
    data, reference_dir = reference
    workdir = tmp_path / "run"
    args = _flags(data, workdir)
    # Steps 1..5 run and step 3 is saved; the batch of step 6 never arrives, so the first run
    # holds the workdir for as long as the test needs, however fast or loaded the machine is.
    first, log = _start("pause_before_step:6", args, tmp_path, "first.txt")
    ready = lambda: (tmp_path / "marker").exists() and (workdir / "checkpoints" / "3").is_dir()
    _wait_for(lambda: ready() and 5 in _train_steps(workdir), first, log)

    second = run_module("pretrain.train", args, check=False)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert lines[-1].startswith(f"error: {workdir} is in use by another run (pid {first.pid} on ")

    # The first run is unharmed by the refused one. Then it dies (kill -9) and is taken over.
    first.kill()
    first.wait()
    third = run_module("pretrain.train", args)
    assert "Taking over" in third.stderr and _resumed_at(third.stderr) == 3
    _assert_rows_match(workdir, reference_dir)
