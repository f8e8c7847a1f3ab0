"""Workdir claims (pretrain/training/claim.py): kind, resumable config changes, one writer.

In process, through `loop.train` as the command lines call it; every refusal must leave the
workdir byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etils import epath

from configs import finetune_classify
from pretrain.tasks.classification import ClassificationTask
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import claim, loop
from pretrain.training.errors import WorkdirError
from tests.cli_utils import read_metrics, run_in_process, tiny_config


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """(data dir, a finished 6-step pretraining workdir)."""
    data = tmp_path_factory.mktemp("data")
    workdir = tmp_path_factory.mktemp("pretrained") / "w"
    loop.train(tiny_config(data), str(workdir), PretrainingTask)
    return data, workdir


def test_finetuning_into_a_pretraining_workdir_is_refused_untouched(pretrained, capsys):
    _, workdir = pretrained
    before = _digest(workdir)
    config = finetune_classify.get_config()
    config.data.train_file = "unused.tsv"
    config.init_from = "elsewhere"
    code, lines = run_in_process(
        lambda: loop.train(config, str(workdir), ClassificationTask), capsys
    )
    assert code == 2 and len(lines) == 1
    assert lines[0] == (
        f"error: {workdir} is a pretraining workdir (made by python -m pretrain.train), not a "
        f"finetuning one: fine-tune into a new --workdir with --config.init_from={workdir}."
    )
    assert _digest(workdir) == before  # No config.json rewrite, no labels.json, nothing.


def test_pretraining_into_a_finetuning_workdir_is_refused(tmp_path, pretrained, capsys):
    data, _ = pretrained
    workdir = epath.Path(tmp_path / "ft")
    workdir.mkdir()
    claim.record_kind(workdir, {"kind": "finetuning", "arch": "bert", "task": "classification"})
    code, lines = run_in_process(
        lambda: loop.train(tiny_config(data), str(workdir), PretrainingTask), capsys
    )
    assert code == 2 and "is a finetuning workdir" in lines[-1] and "new --workdir" in lines[-1]
    assert sorted(p.name for p in workdir.iterdir()) == ["workdir.json"]


def test_a_resume_refuses_fixed_keys_and_applies_the_others_with_a_warning(
    pretrained, tmp_path, capsys, caplog
):
    data, source = pretrained
    workdir = tmp_path / "w"
    subprocess.run(["cp", "-r", str(source), str(workdir)], check=True)
    before = _digest(workdir)
    changed = tiny_config(
        data, model__intermediate_size=48, data__masked_lm_prob=0.3, seed=3,
        data__max_predictions_per_seq=10,
    )  # fmt: skip
    code, lines = run_in_process(lambda: loop.train(changed, str(workdir), PretrainingTask), capsys)
    assert code == 2
    for part in ("data.masked_lm_prob: 0.15 -> 0.3", "model.intermediate_size: 64 -> 48",
                 "seed: 0 -> 3"):  # fmt: skip
        assert part in lines[-1], lines[-1]
    assert _digest(workdir) == before

    longer = tiny_config(data, num_train_steps=8, optimizer__learning_rate=5e-4)
    with caplog.at_level(logging.WARNING):
        code, _ = run_in_process(lambda: loop.train(longer, str(workdir), PretrainingTask), capsys)
    assert code == 0
    (warning,) = [r.getMessage() for r in caplog.records if "changed config" in r.getMessage()]
    assert (
        "num_train_steps: 6 -> 8" in warning
        and "optimizer.learning_rate: 0.001 -> 0.0005" in warning
    )
    assert max(read_metrics(workdir)[0]) == 8
    assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 8
    (entry,) = [json.loads(x) for x in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert entry["config"]["num_train_steps"] == 6


def _lock(workdir: Path, **holder) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "then", **holder}
    (workdir / claim.LOCK_FILE).write_text(json.dumps(record))


def test_a_live_writer_is_named_and_a_dead_or_expired_one_taken_over(pretrained, tmp_path, capsys):
    data, _ = pretrained
    workdir = tmp_path / "w"
    workdir.mkdir()
    config = tiny_config(data, num_train_steps=2)

    # This very process holds it (as a live run on this host would).
    _lock(workdir, pid_start=claim.process_start(os.getpid()))
    code, lines = run_in_process(lambda: loop.train(config, str(workdir), PretrainingTask), capsys)
    assert code == 2 and f"is in use by another run (pid {os.getpid()} on" in lines[-1]
    # Another host, lease still valid.
    _lock(workdir, host="elsewhere", pid=1, lease_until=time.time() + 60)
    code, lines = run_in_process(lambda: loop.train(config, str(workdir), PretrainingTask), capsys)
    assert code == 2 and "on elsewhere" in lines[-1]
    assert not (workdir / "checkpoints").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder in ({"pid": dead.pid}, {"host": "elsewhere", "lease_until": time.time() - 1}):
        _lock(workdir, **holder)
        code, _ = run_in_process(lambda: loop.train(config, str(workdir), PretrainingTask), capsys)
        assert code == 0
        assert not (workdir / claim.LOCK_FILE).exists()  # Released at the end of the run.


def test_a_workdir_that_is_a_file_is_refused(pretrained, tmp_path, capsys):
    data, _ = pretrained
    (tmp_path / "file").write_text("mine")
    code, lines = run_in_process(
        lambda: loop.train(tiny_config(data), str(tmp_path / "file"), PretrainingTask), capsys
    )
    assert code == 2 and "is a file, not a folder" in lines[-1]
    assert (tmp_path / "file").read_text() == "mine"


def test_workdir_kind_is_read_from_old_workdirs_without_a_record(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"init_from": "", "task": "regression"}))
    assert claim.read_kind(tmp_path)["kind"] == "finetuning"
    (tmp_path / "config.json").write_text(json.dumps({"data": {"train_files": "x"}}))
    assert claim.read_kind(tmp_path)["kind"] == "pretraining"
    with pytest.raises(WorkdirError, match="pretraining workdir"):
        claim.check_kind(epath.Path(tmp_path), {"kind": "finetuning"})
