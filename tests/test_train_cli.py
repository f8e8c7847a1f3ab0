"""End to end through `python -m pretrain.train`: a tiny run, its files, and exact resumption."""

import json

import pytest

from tests.cli_utils import assert_one_line_error, read_metrics, run_module, tiny_overrides

pytestmark = pytest.mark.slow  # Every test here drives the command line in subprocesses.

TRAIN_KEYS = {
    "loss",
    "mlm_loss",
    "nsp_loss",
    "mlm_accuracy",
    "nsp_accuracy",
    "learning_rate",
    "grad_norm",
    "tokens_per_sec",
}
EVAL_KEYS = {"eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_accuracy"}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """6 steps in one go, constant LR so that a run stopped at step 3 follows the same schedule."""
    data = tmp_path_factory.mktemp("data")
    workdir = tmp_path_factory.mktemp("straight")
    flags = tiny_overrides(data, optimizer__decay="constant")
    run_module("pretrain.train", ["--config=configs/smoke.py", f"--workdir={workdir}", *flags])
    return data, workdir


def test_tiny_run_writes_the_contract_files(straight_run):
    _, workdir = straight_run
    train, evals = read_metrics(workdir)
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    assert all(TRAIN_KEYS <= row.keys() for step, row in train.items() if step > 1)
    assert sorted(evals) == [3, 6] and all(EVAL_KEYS <= row.keys() for row in evals.values())
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [3, 6]
    assert (workdir / "tokenizer.model").exists() and (workdir / "tokenizer.vocab").exists()
    assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 6
    assert list((workdir / "tensorboard").iterdir())
    # Initial MLM loss is about ln(vocab): the model starts uniform.
    assert train[1]["mlm_loss"] == pytest.approx(5.70, abs=0.5)  # ln 300 = 5.70


def test_resume_continues_with_identical_losses(straight_run, tmp_path):
    data, straight = straight_run
    workdir = tmp_path / "resumed"
    flags = tiny_overrides(data, optimizer__decay="constant")
    base = ["--config=configs/smoke.py", f"--workdir={workdir}"]
    run_module("pretrain.train", [*base, *flags, "--config.num_train_steps=3"])
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [3]
    resumed = run_module("pretrain.train", [*base, *flags])
    assert "Resumed" in resumed.stderr
    expected, _ = read_metrics(straight)
    got, _ = read_metrics(workdir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # The resumed run appended its rows.
    for step in range(1, 7):
        assert got[step]["loss"] == expected[step]["loss"], step  # Bit for bit.


def test_finished_run_restarts_as_a_no_op(straight_run):
    data, workdir = straight_run
    flags = tiny_overrides(data, optimizer__decay="constant")
    proc = run_module(
        "pretrain.train", ["--config=configs/smoke.py", f"--workdir={workdir}", *flags]
    )
    assert "Resumed" in proc.stderr
    train, _ = read_metrics(workdir)
    assert max(train) == 6


# Mistakes caught while parsing the command line; mistakes found by the library are tested in
# process (tests/test_bad_inputs.py): the command prints them the same way.
@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.model.hiden_size=3", "hiden_size"),
        ("--config.model.hidden_size=1.5", "--config.model.hidden_size=1.5"),
    ],
)
def test_user_mistakes_end_in_one_line(tmp_path, override, message):
    (tmp_path / "d").mkdir()
    flags = tiny_overrides(tmp_path / "d")
    proc = run_module(
        "pretrain.train",
        ["--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}", *flags, override],
        devices=2,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_during_data_preparation_exits_0_without_training(tmp_path):
    """The handler is installed before the slow setup, so an early SIGTERM is honoured too."""
    import signal
    import subprocess
    import sys
    import time

    from tests.cli_utils import REPO, cli_env

    (tmp_path / "d").mkdir()
    flags = tiny_overrides(tmp_path / "d")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pretrain.train", "--config=configs/smoke.py",
         f"--workdir={tmp_path / 'w'}", *flags],
        cwd=REPO, env=cli_env(1), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (tmp_path / "w" / "config.json").exists() and time.time() < deadline:
        time.sleep(0.05)  # config.json is written right after the handler is installed.
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert "SIGTERM before the first step" in stderr
    assert (
        not (tmp_path / "w" / "metrics.jsonl").exists()
        or "loss" not in (tmp_path / "w" / "metrics.jsonl").read_text()
    )


@pytest.mark.parametrize(
    "module, config, message",
    [
        ("pretrain.train", "configs/nope.py", "--config=configs/nope.py cannot be loaded: "),
        ("pretrain.train", "configs/finetune_classify.py", "is a fine-tuning config"),
        ("pretrain.finetune", "configs/smoke.py", "is a pretraining config"),
    ],
)
def test_a_config_file_that_is_missing_or_for_the_other_command(tmp_path, module, config, message):
    proc = run_module(module, [f"--config={config}", f"--workdir={tmp_path / 'w'}"], check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "module, args, message",
    [
        ("pretrain.evaluate", ["--workdir=w"], "missing --eval_file: give it"),  # No --config.
        ("pretrain.export_hf", [], "missing --workdir, --output: give them"),
        ("pretrain.train", ["--config=configs/smoke.py"], "missing --workdir: give it"),
    ],
)
def test_a_missing_required_flag_is_one_line(module, args, message):
    assert_one_line_error(run_module(module, args, check=False), message)
