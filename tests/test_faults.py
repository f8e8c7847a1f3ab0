"""Fault injection through `python -m pretrain.train`: kill -9, bad checkpoints, NaNs, full disk.

Every fault hits a real CLI process. Where the fault must land at an exact moment (inside a
checkpoint save, inside eval), the process runs `pretrain.train` with a test hook from this
module that, at that moment, writes a marker file and sleeps; the test then SIGKILLs it. The
hooks only pause or poison one batch: the code under test is the shipped code.

Reference: one uninterrupted 9-step run (checkpoints and evals at 3, 6, 9). Every run that
resumes after a fault must reproduce its losses bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_utils import REPO, cli_env, read_metrics, run_module, tiny_overrides

pytestmark = pytest.mark.slow  # Every test here drives the command line in subprocesses.

STEPS = 9
# Every metric of a train row that is a pure function of (seed, step); tokens_per_sec is timing.
EXACT_KEYS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "grad_norm")
EVAL_KEYS = ("eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_accuracy")


def _flags(data: Path, workdir: Path, **extra: object) -> list[str]:
    overrides = dict(num_train_steps=STEPS, optimizer__decay="constant")
    return [
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        *tiny_overrides(data, **{**overrides, **extra}),
    ]


def _complete_steps(workdir: Path) -> list[int]:
    """Step folders orbax counts as complete (a killed save leaves `<step>.orbax-checkpoint-tmp`,
    a set-aside corrupt one is `<step>.corrupt-<time>`)."""
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _all_rows(workdir: Path) -> list[dict]:
    """Every metrics row, including those of killed runs and of steps redone after a resume."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_rows_match(workdir: Path, reference: Path) -> None:
    """Each row any run wrote equals the uninterrupted run's row of that step, bit for bit."""
    expected_train, expected_eval = read_metrics(reference)
    rows = _all_rows(workdir)
    for row in rows:
        if "eval_mlm_loss" in row:
            expected, keys = expected_eval[row["step"]], EVAL_KEYS
        else:
            expected, keys = expected_train[row["step"]], EXACT_KEYS
        assert {k: row[k] for k in keys} == {k: expected[k] for k in keys}, row["step"]
    train, evals = read_metrics(workdir)
    assert sorted(train) == list(range(1, STEPS + 1)) and sorted(evals) == [3, 6, 9]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_reference(tmp_path_factory) -> tuple[Path, Path]:
    """(data dir, workdir) of the uninterrupted run."""
    data = tmp_path_factory.mktemp("data")
    workdir = tmp_path_factory.mktemp("reference")
    run_module("pretrain.train", _flags(data, workdir))
    assert _complete_steps(workdir) == [3, 6, 9]
    return data, workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    return run_reference(tmp_path_factory)


def _copy_of(reference_workdir: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(reference_workdir, workdir)
    (workdir / "metrics.jsonl").write_text("")
    return workdir


# --- Hooks, run inside the CLI subprocess (see `_hooked_main`). ---


def _pause() -> None:
    """Tells the test "the fault point is reached", then waits for SIGKILL."""
    Path(os.environ["FAULT_MARKER"]).write_text(str(os.getpid()))
    time.sleep(600)


class _HookedData:
    """The task's train data with `transform(step, batch)` applied (step counted from 1)."""

    def __init__(self, data, transform):
        self.data, self.transform = data, transform
        self.batch_size = data.batch_size

    def batch(self, step, rows=None):
        return self.transform(step + 1, self.data.batch(step, rows=rows))


def _task_with(transforms=(), on_eval=None):
    """PretrainingTask whose train batches pass through `transforms` and whose evaluations call
    `on_eval()` before their row is written: the shipped loop and task, one seam each."""
    from pretrain.tasks.pretraining import PretrainingTask

    def transform(step, batch):
        for fn in transforms:
            batch = fn(step, batch)
        return batch

    class Hooked(PretrainingTask):
        @classmethod
        def build(cls, config, workdir):
            task = super().build(config, workdir)
            if transforms:
                task.train_data = _HookedData(task.train_data, transform)
            return task

        def eval_metrics(self, sums, outputs):
            row = super().eval_metrics(sums, outputs)
            if on_eval is not None:
                on_eval()
            return row

    return Hooked


def _pause_before_step(arg: str) -> dict:
    """Steps 1..N-1 can run, the batch of step N never arrives."""

    def pause_at(step, batch):
        if step == int(arg):
            _pause()
        return batch

    return {"transforms": [pause_at]}


def _slow_batches(arg: str) -> dict:
    """Every batch takes `arg` seconds more to build: a run long enough to signal mid-way."""

    def slow(step, batch):
        time.sleep(float(arg))
        return batch

    return {"transforms": [slow]}


def _pause_in_eval(arg: str) -> dict:
    """The N-th evaluation of this process has run; its row is not written yet."""
    calls = []

    def on_eval():
        calls.append(1)
        if len(calls) == int(arg):
            _pause()

    return {"on_eval": on_eval}


def _pause_in_save(arg: str) -> dict:
    """Step N is fully written to its tmp folder; orbax's commit (the rename) has not run."""
    from orbax.checkpoint.path import atomicity  # Public path of the class orbax commits with.

    cls = atomicity.AtomicRenameTemporaryPath
    original = cls.finalize

    async def finalize(self, *args, **kwargs):
        if self.get_final().name == arg:
            _pause()  # Blocks orbax's background save thread; training goes on meanwhile.
        return await original(self, *args, **kwargs)

    cls.finalize = finalize
    return {}


def _nan_at_steps(arg: str) -> dict:
    """The batches of the listed steps give a NaN loss, as corrupt data or an overflow would."""
    bad = {int(s) for s in arg.split(",")}

    def poison(step, batch):
        if step in bad:
            batch = {**batch, "masked_lm_weights": batch["masked_lm_weights"] * float("nan")}
        return batch

    return {"transforms": [poison]}


_HOOKS = {
    "pause_before_step": _pause_before_step,
    "slow_batches": _slow_batches,
    "pause_in_eval": _pause_in_eval,
    "pause_in_save": _pause_in_save,
    "nan_at_steps": _nan_at_steps,
}
_HOOKED_CLI = [sys.executable, "-c", "from tests.test_faults import _hooked_main; _hooked_main()"]


def _hooked_main() -> None:
    """`python -m pretrain.train` with the hook named by $FAULT_HOOK (`name:arg`) installed."""
    import functools

    from absl import app

    from pretrain import command, train

    seams = {"transforms": [], "on_eval": None}
    for hook in os.environ["FAULT_HOOK"].split(";"):  # name:arg;name:arg
        name, _, arg = hook.partition(":")
        for key, value in _HOOKS[name](arg).items():
            seams[key] = seams[key] + value if key == "transforms" else value
    task_cls = _task_with(**seams)
    sys.argv[0] = "pretrain.train"
    app.run(functools.partial(train.main, task_cls=task_cls), flags_parser=command.parse_flags)


def _hook_env(hook: str, marker: Path) -> dict[str, str]:
    return {**cli_env(1), "FAULT_HOOK": hook, "FAULT_MARKER": str(marker)}


def _run_hooked(hook: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs the CLI with a hook that does not pause, to its end."""
    return subprocess.run(
        [*_HOOKED_CLI, *args],
        cwd=REPO,
        env=_hook_env(hook, tmp_path / "marker"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _kill_at(hook: str, args: list[str], tmp_path: Path, ready=lambda: True) -> str:
    """Starts the CLI with `hook`; SIGKILLs it once the hook paused and `ready()`; its stderr."""
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    log = tmp_path / f"stderr-{hook.replace(':', '-')}.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [*_HOOKED_CLI, *args],
            cwd=REPO,
            env=_hook_env(hook, marker),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.time() + 180
            while not (marker.exists() and ready()):
                assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                assert time.time() < deadline, (
                    f"hook {hook} never reached:\n{log.read_text()[-3000:]}"
                )
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return log.read_text()


def _resumed_at(stderr: str) -> int | None:
    match = re.search(r"Resumed from \S+ at step (\d+)", stderr)
    return int(match.group(1)) if match else None


def test_kill_9_mid_step_mid_save_and_mid_eval_resume_exactly(reference, tmp_path):
    data, reference_dir = reference
    workdir = tmp_path / "run"
    args = _flags(data, workdir)
    checkpoints = workdir / "checkpoints"

    # 1. Killed between steps 4 and 5, once the async save of step 3 is committed.
    _kill_at("pause_before_step:5", args, tmp_path, ready=(checkpoints / "3").is_dir)
    assert _complete_steps(workdir) == [3]

    # 2. Killed while saving step 6, after its files are written, before orbax's commit rename.
    stderr = _kill_at("pause_in_save:6", args, tmp_path)
    assert _resumed_at(stderr) == 3
    assert (checkpoints / "6.orbax-checkpoint-tmp" / "state").is_dir()
    assert _complete_steps(workdir) == [3]  # The half-written step 6 is never picked.

    # 3. Killed inside the evaluation at step 9 (its second), once step 6 is committed.
    stderr = _kill_at("pause_in_eval:2", args, tmp_path, ready=(checkpoints / "6").is_dir)
    assert _resumed_at(stderr) == 3
    assert _complete_steps(workdir) == [3, 6]
    assert not (checkpoints / "6.orbax-checkpoint-tmp").exists()  # Replaced by the new save.

    # 4. A clean start finishes the run.
    proc = run_module("pretrain.train", args)
    assert _resumed_at(proc.stderr) == 6
    assert _complete_steps(workdir) == [3, 6, 9]
    assert not [p.name for p in checkpoints.iterdir() if not p.name.isdigit()]
    _assert_rows_match(workdir, reference_dir)


def _truncate_largest_file(folder: Path) -> Path:
    largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with largest.open("r+b") as f:
        f.truncate(largest.stat().st_size // 2)
    return largest


def test_corrupt_newest_checkpoint_is_set_aside_and_the_previous_one_used(reference, tmp_path):
    data, reference_dir = reference
    workdir = _copy_of(reference_dir, tmp_path)
    broken = _truncate_largest_file(workdir / "checkpoints" / "9" / "state")
    broken_size = broken.stat().st_size

    proc = run_module("pretrain.train", _flags(data, workdir))

    warning = [line for line in proc.stderr.splitlines() if "is unreadable" in line]
    assert len(warning) == 1, proc.stderr[-3000:]
    assert f"{workdir / 'checkpoints' / '9'} is unreadable" in warning[0]
    assert "resumed from step 6" in warning[0]
    assert _resumed_at(proc.stderr) == 6
    # Kept for inspection under a name orbax ignores; step 9 was saved again.
    (aside,) = (workdir / "checkpoints").glob("9.corrupt-*")
    assert (aside / broken.relative_to(workdir / "checkpoints" / "9")).stat().st_size == broken_size
    assert aside.name in warning[0]
    assert _complete_steps(workdir) == [3, 6, 9]
    train, _ = read_metrics(workdir)
    assert sorted(train) == [7, 8, 9]
    _assert_rows_match_steps(workdir, reference_dir, [7, 8, 9])


def _assert_rows_match_steps(workdir: Path, reference: Path, steps: list[int]) -> None:
    expected, _ = read_metrics(reference)
    got, _ = read_metrics(workdir)
    for step in steps:
        assert {k: got[step][k] for k in EXACT_KEYS} == {k: expected[step][k] for k in EXACT_KEYS}


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(reference, tmp_path):
    data, reference_dir = reference
    workdir = _copy_of(reference_dir, tmp_path)
    for step in (3, 6, 9):
        _truncate_largest_file(workdir / "checkpoints" / str(step) / "state")
    before = _tree_digest(workdir / "checkpoints")

    proc = run_module("pretrain.train", _flags(data, workdir), check=False)

    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no checkpoint in") and "step 9" in last, last
    assert _tree_digest(workdir / "checkpoints") == before  # Nothing moved, nothing deleted.


def test_checkpoint_of_another_model_size_is_one_line(reference, tmp_path):
    data, reference_dir = reference
    workdir = _copy_of(reference_dir, tmp_path)
    before = _tree_digest(workdir)
    proc = run_module(
        "pretrain.train", _flags(data, workdir, model__intermediate_size=48), check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {workdir} holds checkpoints of a run with another config")
    assert "model.intermediate_size: 64 -> 48" in last
    assert _tree_digest(workdir) == before  # Refused before writing: config.json too.

    # Without the saved config (a workdir of an older version), the checkpoint's shapes refuse.
    (workdir / "config.json").unlink()
    proc = run_module(
        "pretrain.train", _flags(data, workdir, model__intermediate_size=48), check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: checkpoint step 9 does not match the model: params/encoder/layers/0/mlp_in/bias "
        "has shape (64,) in the checkpoint but (48,) in the config; use the model config the "
        "checkpoint was trained with, or a new --workdir."
    )
    assert _complete_steps(workdir) == [3, 6, 9]  # Not mistaken for corruption: nothing moved.


def test_full_disk_while_saving_is_one_line_and_keeps_older_checkpoints(reference, tmp_path):
    """RLIMIT_FSIZE makes every write past 16 KiB fail (EFBIG) as a full disk would (ENOSPC):
    the step-9 save, whose data file is ~250 KiB, fails inside orbax's background thread."""
    data, reference_dir = reference
    workdir = _copy_of(reference_dir, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "9")
    before = _tree_digest(workdir / "checkpoints")
    limit = 16 * 1024

    proc = run_module(
        "pretrain.train",
        _flags(data, workdir),
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )

    assert proc.returncode == 2
    # Orbax's worker threads may still log their (one-line) echo of the failure after ours.
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: could not save checkpoint step 9 in {workdir / 'checkpoints'}")
    assert "File too large" in error and "complete steps: 3, 6" in error, error
    assert "Traceback" not in proc.stderr
    assert _complete_steps(workdir) == [3, 6]
    after = _tree_digest(workdir / "checkpoints")
    assert {k: v for k, v in after.items() if k.startswith(("3/", "6/"))} == before


def test_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    reference, tmp_path
):
    data, _ = reference
    workdir = tmp_path / "run"
    # Warmup makes step 1's learning rate 0; step 2's update (lr 5e29) overflows step 3.
    proc = run_module(
        "pretrain.train",
        _flags(data, workdir, optimizer__learning_rate=1e30, checkpoint_every_steps=1),
        check=False,
    )

    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "error: non-finite loss or gradient at step 3 (1 bad steps, config.max_bad_steps=0); "
        "the last good checkpoint is step 2. Lower config.optimizer.learning_rate or raise "
        "config.max_bad_steps to skip such steps."
    )
    assert _complete_steps(workdir) == [1, 2]
    assert list((workdir / "checkpoints").iterdir()) and not list(
        (workdir / "checkpoints").glob("*tmp*")
    )  # The save of step 2, in flight when step 3 failed, was committed.
    train, _ = read_metrics(workdir)
    assert sorted(train) == [1, 2]


@pytest.mark.parametrize(
    "nan_steps, outcome",
    [("4", "skipped"), ("3,5", "stopped")],
)
def test_max_bad_steps_skips_that_many_non_finite_steps(reference, tmp_path, nan_steps, outcome):
    data, reference_dir = reference
    workdir = tmp_path / "run"
    proc = _run_hooked(
        f"nan_at_steps:{nan_steps}",
        _flags(data, workdir, max_bad_steps=1),
        tmp_path,
    )
    first = int(nan_steps.split(",")[0])
    warning = (
        f"Skipped 1 step(s) with a non-finite loss or gradient so far (the first at step {first})"
    )
    assert warning in proc.stderr
    train, _ = read_metrics(workdir)
    expected, _ = read_metrics(reference_dir)
    for step in range(1, first):  # Identical up to the bad step.
        assert train[step]["loss"] == expected[step]["loss"]
    if outcome == "skipped":
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert train[4]["loss"] is None and train[4]["grad_norm"] is None  # Written as null.
        # The NaN update was dropped, not applied: later steps are finite.
        assert all(train[s]["loss"] is not None and train[s]["loss"] > 0 for s in range(5, 10))
        assert _complete_steps(workdir) == [3, 6, 9]
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert (
            proc.stderr.strip()
            .splitlines()[-1]
            .startswith(
                "error: non-finite loss or gradient at step 3 (2 bad steps, config.max_bad_steps=1)"
            )
        )
        assert _complete_steps(workdir) == [3]
