"""`benchmarks/device_check.sh --dry_run`: the accelerator check runs its whole sequence on the
CPU, so the script cannot rot between the rare sessions that have a GPU."""

import json
import os
import subprocess
import sys

import pytest

from tests.cli_utils import REPO


@pytest.mark.slow
def test_dry_run_prints_every_line_of_the_check(tmp_path):
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    env.pop("XLA_FLAGS", None)  # One CPU device, as on a laptop.
    caller = tmp_path / "caller"
    caller.mkdir()
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks/device_check.sh"), "--dry_run", "--out", "out"],
        cwd=caller, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A relative --out is the caller's; nothing else is written there or into the checkout.
    assert sorted(os.listdir(caller)) == ["out"]
    assert not (REPO / "device_check_out").exists()
    assert proc.stderr.strip().splitlines()[-1] == f"device check outputs: {caller / 'out'}"
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    results = (caller / "out" / "results.jsonl").read_text().splitlines()
    assert rows == [json.loads(x) for x in results]
    assert rows[0]["check"] == "device" and rows[0]["platform"] == "cpu"
    bench = [r for r in rows if r["check"] == "benchmark"]
    combos = {(r["model"], r["seq"], r["attention"], r["remat"]) for r in bench}
    assert len(bench) == len(combos) == 2 * 1 * 2 * 2  # Models, lengths (one dry), paths, remat.
    for r in bench:
        if r["attention"] == "cudnn":
            assert r["status"] == "skipped"
        else:
            assert r["status"] == "ok", r
            assert r["tokens_per_sec"] > 0 and r["global_batch_size"] == r["batch"] >= 4
    last = rows[-1]
    assert last["check"] == "pretrain_1min" and last["exit_code"] == 0, last
    assert last["steps"] > 10 and last["loss_fell"] and last["tokens_per_sec"] > 0


def test_outputs_go_to_a_fresh_temporary_folder_by_default(tmp_path):
    # A stand-in python shows the arguments the script passes on, without running the check.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\necho "$@"\n')
    (bin_dir / "python").chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(temp))
    proc = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--dry_run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    script, flag, out, dry = proc.stdout.split()
    assert (script, flag, dry) == ("benchmarks/device_check.py", "--out", "--dry_run")
    assert os.path.dirname(out) == str(temp) and os.path.isdir(out)
