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
    proc = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--dry_run", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert rows == [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows[0]["check"] == "device" and rows[0]["platform"] == "cpu"
    bench = [r for r in rows if r["check"] == "benchmark"]
    combos = {(r["model"], r["seq"], r["attention"], r["remat"]) for r in bench}
    assert len(bench) == len(combos) == 2 * 2 * 2 * 2
    for r in bench:
        if r["attention"] == "cudnn":
            assert r["status"] == "skipped"
        else:
            assert r["status"] == "ok", r
            assert r["tokens_per_sec"] > 0 and r["global_batch_size"] == r["batch"] >= 4
    last = rows[-1]
    assert last["check"] == "pretrain_1min" and last["exit_code"] == 0, last
    assert last["steps"] > 10 and last["loss_fell"] and last["tokens_per_sec"] > 0
