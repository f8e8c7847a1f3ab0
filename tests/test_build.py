"""Building shards: the Beam command, workers that agree, resume, refusals and bad input."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import records, shards
from tests.cli_utils import REPO, cli_env, write_corpus


def _digests(directory: Path) -> dict[str, str]:
    """Shard files and sidecars by name (the manifest and tokenizer copy are the same input)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob("shard-*"))
    }


def _build_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_pipeline.build", *args],
        cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=300, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c.txt", num_docs=400, seed=3)


def _flags(corpus: Path, out: Path, tokenizer, *extra: str) -> list[str]:
    return [f"--input={corpus}", f"--output_dir={out}", f"--tokenizer_model={tokenizer.model_path}",
            "--max_seq_length=32", "--unit_mb=0.004", *extra]  # fmt: skip


@pytest.mark.slow
def test_one_and_two_beam_workers_write_identical_shards(corpus, pipeline_tokenizer, tmp_path):
    one = _build_cli(_flags(corpus, tmp_path / "one", pipeline_tokenizer))
    two = _build_cli(
        _flags(corpus, tmp_path / "two", pipeline_tokenizer, "--direct_num_workers=2",
               "--direct_running_mode=multi_processing")
    )  # fmt: skip
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert len(_digests(tmp_path / "one")) > 10
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    assert "shards (0 already built)" in one.stdout.splitlines()[-1]
    # The in-process path is the same function: the same bytes again.
    manifest = json.loads((tmp_path / "one" / records.MANIFEST).read_text())
    recipe = shards.Recipe(**manifest["params"])
    shards.build_locally(str(corpus), str(tmp_path / "local"), pipeline_tokenizer.model_path,
                         recipe, manifest["unit_bytes"])  # fmt: skip
    assert _digests(tmp_path / "local") == _digests(tmp_path / "one")


@pytest.mark.slow
def test_an_interrupted_build_resumes_to_the_same_shards(corpus, pipeline_tokenizer, tmp_path):
    reference = tmp_path / "reference"
    assert _build_cli(_flags(corpus, reference, pipeline_tokenizer)).returncode == 0
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_pipeline.build", *_flags(corpus, out, pipeline_tokenizer)],
        cwd=REPO, env=cli_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while len(list(out.glob("shard-*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # Killed mid-build: some shards done, others not.
    proc.wait()
    done = len(list(out.glob("shard-*.json")))
    assert 3 <= done < len(_digests(reference)) // 2
    rerun = _build_cli(_flags(corpus, out, pipeline_tokenizer))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (
        f"({done} already built)" in rerun.stdout or f"({done + 1} already built)" in rerun.stdout
    )
    assert _digests(out) == _digests(reference) and not list(out.glob(".tmp-*"))


def test_a_different_build_into_the_same_directory_is_refused(corpus, pipeline_tokenizer, tmp_path):
    recipe = shards.Recipe(max_seq_length=32)
    shards.build_locally(str(corpus), str(tmp_path), pipeline_tokenizer.model_path, recipe, 4096)
    before = _digests(tmp_path)
    proc = _build_cli(_flags(corpus, tmp_path, pipeline_tokenizer, "--max_seq_length=64"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path} holds a different build (changed: params, unit_bytes, units): use a "
        "new --output_dir, or delete it to rebuild"
    )
    assert _digests(tmp_path) == before


def _local(corpus: Path, out: Path, tokenizer) -> dict:
    recipe = shards.Recipe(max_seq_length=32)
    return shards.build_locally(str(corpus), str(out), tokenizer.model_path, recipe, 1 << 20)


def test_bad_input_is_one_line_or_a_counted_skip(pipeline_tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no text: every file is empty"):
        _local(empty, tmp_path / "a", pipeline_tokenizer)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        _local(binary, tmp_path / "b", pipeline_tokenizer)

    # A 5 MB line without a newline and stray non-UTF-8 bytes in real text: skipped, counted.
    text = write_corpus(tmp_path / "text.txt", num_docs=40)
    with text.open("ab") as f:
        f.write(b"\n" + b"x" * (5 << 20) + b"\n\nok then.\n\xff\xfe bad\n\xc3\x28 bad too\n")
    totals = _local(text, tmp_path / "c", pipeline_tokenizer)
    assert totals["long_lines"] == 1 and totals["bad_utf8_lines"] == 2 and totals["records"] > 0

    # The command line says it in one line too.
    proc = _build_cli([f"--input={binary}", f"--output_dir={tmp_path / 'd'}",
                       f"--tokenizer_model={pipeline_tokenizer.model_path}"])  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    proc = _build_cli([f"--input={text}", f"--output_dir={tmp_path / 'e'}",
                       f"--tokenizer_model={pipeline_tokenizer.model_path}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped 2 lines that are not UTF-8 and 1 lines over 1 MiB" in proc.stdout


def test_a_tfds_source_goes_through_the_same_pipeline(pipeline_tokenizer, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    text = " ".join(["Zebras run fast. Cats sleep all day long."] * 3)
    data = [{"text": f"{text} Number {i}."} for i in range(30)]

    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kwargs: data):
        totals = _local("tfds:lm1b", tmp_path / "w", pipeline_tokenizer)
    assert totals["documents"] == 30 and totals["records"] >= 30
