"""Preemption and topology change: a run goes on, on another mesh or number of processes.

The batch of step s is a function of (seed, s), and checkpoints restore into whatever sharding
the new mesh gives, so after a resume the losses are those of the uninterrupted run up to
float32 reduction order. The uninterrupted run: 8 devices as data=4 x tensor=2, one process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.test_multiprocess import (
    LOSS_TOLERANCE,
    data_flags,
    finish,
    losses,
    max_loss_diff,
    metric_rows,
    start_training,
    train,
)

pytestmark = pytest.mark.slow  # Every test here drives the command line in subprocesses.

STEPS = 24
SAVE_EVERY = 12


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, pipeline_corpus, pipeline_tokenizer) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(run, (*_flags(pipeline_corpus, pipeline_tokenizer), "--config.mesh.tensor=2"), devices=8)
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    return run


def _flags(pipeline_corpus, pipeline_tokenizer) -> tuple[str, ...]:
    return (
        *data_flags(pipeline_corpus, pipeline_tokenizer),
        f"--config.num_train_steps={STEPS}",
        f"--config.checkpoint_every_steps={SAVE_EVERY}",
    )


def test_resume_on_two_devices_continues_the_eight_device_run(
    uninterrupted, tmp_path, pipeline_corpus, pipeline_tokenizer
):
    # The run as it stood at step 12: its checkpoint (sharded data=4 x tensor=2) and its rows.
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    shutil.rmtree(run / "checkpoints" / str(STEPS))
    kept = [row for row in metric_rows(run) if row["step"] <= SAVE_EVERY]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))

    train(run, _flags(pipeline_corpus, pipeline_tokenizer), devices=2)  # data=2

    resumed = losses(run)  # Fails on a step written twice, as a restart from scratch would.
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert max_loss_diff(resumed, losses(uninterrupted)) < LOSS_TOLERANCE


def _preempt(
    tmp_path: Path, flags: tuple[str, ...], *, processes: int, devices: int
) -> tuple[Path, list[list[str]]]:
    """Sends SIGTERM to the last process once step 2 is logged; checks the run saved and ended.

    Returns the run's workdir and, per process, the steps its log says it saved on SIGTERM.
    """
    run, logs = tmp_path / "run", tmp_path / "logs"
    proc = start_training(run, flags, devices=devices, processes=processes, log_dir=logs)
    metrics_file = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics_file.exists() and '"step": 2,' in metrics_file.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    last = logs / f"process_{processes - 1}.pid"
    os.kill(int(last.read_text()) if last.exists() else proc.pid, signal.SIGTERM)
    finish(proc, logs)  # Exit status 0 from every process.
    saved = [
        re.findall(r"Stop requested: saving step (\d+)", log.read_text())
        for log in sorted(logs.glob("process_*.log"))
    ]
    assert len(saved) == processes and len(saved[0]) == 1, saved
    step = int(saved[0][0])
    assert step < STEPS, "the run ended before the preemption took effect"
    assert (run / "checkpoints" / str(step)).is_dir()
    assert max(losses(run)) == step  # It stopped there.
    return run, saved


def _restore_fails_on_one_process_main() -> None:
    """`python -m pretrain.train ...` whose process $FAIL_PROCESS cannot read step $FAIL_STEP.

    A host with a flaky mount or a stale cache: the other processes read that step fine.
    """
    import runpy

    import jax

    from pretrain.training import checkpoint

    restore = checkpoint.Checkpointer.restore
    process, step = int(os.environ["FAIL_PROCESS"]), int(os.environ["FAIL_STEP"])

    def failing_restore(self, at_step, abstract_state):
        if at_step == step and jax.process_index() == process:
            raise OSError(f"injected read failure of step {at_step} on this host")
        return restore(self, at_step, abstract_state)

    checkpoint.Checkpointer.restore = failing_restore
    sys.argv[1:3] = []  # local.sh's `-m pretrain.train`.
    runpy.run_module("pretrain.train", run_name="__main__", alter_sys=True)


def test_a_step_unreadable_on_one_process_is_skipped_by_all(
    uninterrupted, tmp_path, pipeline_corpus, pipeline_tokenizer, monkeypatch
):
    # The finished run: checkpoints 12 and 24, rows up to 12 (13-24 will be written again).
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    kept = [row for row in metric_rows(run) if row["step"] <= SAVE_EVERY]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = -m ] || exec {sys.executable} "$@"\n'
        f'exec {sys.executable} -c "from tests.test_topology_change import '
        '_restore_fails_on_one_process_main as m; m()" "$@"\n'
    )
    python.chmod(0o755)
    monkeypatch.setenv("FAIL_PROCESS", "1")
    monkeypatch.setenv("FAIL_STEP", str(STEPS))
    flags = _flags(pipeline_corpus, pipeline_tokenizer)
    logs = train(run, flags, devices=2, processes=2, python=str(python))

    # Both processes went back to step 12 together and trained 13-24 as the uninterrupted run.
    log0 = (logs / "process_0.log").read_text()
    assert f"checkpoints/{STEPS} is unreadable (unreadable on process [1])" in log0, log0[-3000:]
    assert len(list((run / "checkpoints").glob(f"{STEPS}.corrupt-*"))) == 1
    assert (run / "checkpoints" / str(STEPS)).is_dir()
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert max_loss_diff(resumed, losses(uninterrupted)) < LOSS_TOLERANCE


def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resumes(
    uninterrupted, tmp_path, pipeline_corpus, pipeline_tokenizer
):
    # Process 1, not the coordinator, gets the signal; the resume restores on both together.
    flags = _flags(pipeline_corpus, pipeline_tokenizer)
    run, saved = _preempt(tmp_path, flags, processes=2, devices=2)
    assert saved[0] == saved[1], saved

    train(run, flags, devices=2, processes=2)
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert max_loss_diff(resumed, losses(uninterrupted)) < LOSS_TOLERANCE


def test_sigterm_to_a_single_process_saves_the_step_and_exits_0(
    uninterrupted, tmp_path, pipeline_corpus, pipeline_tokenizer
):
    # One process takes the Python-handler path; resuming is what the test above checks.
    run, _ = _preempt(tmp_path, _flags(pipeline_corpus, pipeline_tokenizer), processes=1, devices=2)
    before, reference = losses(run), losses(uninterrupted)
    assert max_loss_diff(before, {s: reference[s] for s in before}) < LOSS_TOLERANCE
