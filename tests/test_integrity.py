"""Damaged, truncated and missing shards: checksums, verify, repair, and one line in training.

The in-process tests build a small corpus into 6 shards, damage one, and check that
`integrity.verify` and the reader name it, and that the repair command the error line names
(`python -m data_pipeline.build ... --verify --repair`, run here through its `main`) restores it
byte for byte. The slow test does the same through `python -m pretrain.train`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from data_pipeline import build, integrity, records, shards
from data_pipeline.errors import DataError
from tests.cli_utils import (
    LOG_COMPILES,
    assert_one_line_error,
    read_metrics,
    run_module,
    tiny_config,
    tiny_overrides,
    write_corpus,
)

UNIT_BYTES = 4096  # 6 shards of the test corpus.


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*"))}


def _build(corpus: Path, out: Path, tokenizer) -> Path:
    recipe = shards.Recipe(max_seq_length=32)
    shards.build_locally(str(corpus), str(out), tokenizer.model_path, recipe, UNIT_BYTES)
    return out


def _flip(path: Path) -> None:
    """2 000 bytes inverted in the middle of the file (or all of a smaller one)."""
    data = bytearray(path.read_bytes())
    middle = max(0, len(data) // 2 - 1000)
    for i in range(middle, min(len(data), middle + 2000)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    """The last 1 000 bytes lost, as by a copy cut short."""
    path.write_bytes(path.read_bytes()[:-1000])


DAMAGE = {"flipped": (_flip, "damaged"), "truncated": (_truncate, "truncated"),
          "deleted": (Path.unlink, "missing")}  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory, pipeline_tokenizer) -> Path:
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "c.txt", num_docs=120, seed=5)
    return _build(corpus, tmp_path_factory.mktemp("built") / "b", pipeline_tokenizer)


def test_sidecars_and_manifest_record_each_shards_size_and_sha256(built):
    manifest = json.loads((built / records.MANIFEST).read_text())
    assert len(manifest["shards"]) == len(manifest["units"]) >= 5
    for name, recorded in manifest["shards"].items():
        data = (built / f"{name}.array_record").read_bytes()
        expected = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert recorded == expected
        sidecar = json.loads((built / f"{name}.json").read_text())
        assert {k: sidecar[k] for k in expected} == expected
    assert integrity.verify(str(built)).bad == {}


def test_shards_built_before_checksums_are_checked_for_presence(built, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(built, out)
    for sidecar in out.glob("shard-*.json"):  # As an older version wrote them.
        counts = json.loads(sidecar.read_text())
        sidecar.write_text(
            json.dumps({k: v for k, v in counts.items() if k not in ("bytes", "sha256")})
        )
    manifest = json.loads((out / records.MANIFEST).read_text())
    del manifest["shards"]
    (out / records.MANIFEST).write_text(json.dumps(manifest))
    _flip(out / "shard-00000.array_record")
    (out / "shard-00001.array_record").unlink()
    found = integrity.verify(str(out))
    assert found.bad == {1: "missing"} and found.unchecked == found.num_shards - 1


def _repair_argv(message: str) -> list[str]:
    """The `data_pipeline.build` arguments of the command an error line ends with."""
    command = message[message.index("python -m data_pipeline.build") :]
    return shlex.split(command)[3:]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_bad_shard_is_named_and_repair_restores_it_byte_for_byte(built, tmp_path, damage, capsys):
    out = tmp_path / "b"
    shutil.copytree(built, out)
    pristine = _digests(out)
    shard = out / "shard-00002.array_record"
    harm, word = DAMAGE[damage]
    harm(shard)

    found = integrity.verify(str(out))
    assert list(found.bad) == [2] and found.bad[2].startswith(word)
    assert found.lines() == [f"{shard}: {found.bad[2]}"]
    data = records.BuiltData(str(out))
    with pytest.raises(DataError) as error:
        data.read(range(len(data)))
    message = str(error.value)
    assert "\n" not in message
    assert re.match(rf"cannot read record \d+ of {re.escape(str(shard))} \(", message), message
    with pytest.raises(DataError, match="1 of .* shards .* damaged or missing .*--repair"):
        integrity.require_sound(str(out))

    capsys.readouterr()
    assert build.main(_repair_argv(message)) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"bad shard: {shard}: {found.bad[2]}"
    assert printed[1] == "repaired 1 of 1 bad shards" and printed[2].endswith(", 0 bad")
    assert _digests(out) == pristine
    fresh = records.BuiltData(str(out))  # As the rerun will: a new reader, every record read.
    assert len(fresh.read(range(len(fresh)))) == len(data)


def test_verify_alone_reports_every_bad_shard_and_changes_nothing(built, tmp_path, capsys):
    out = tmp_path / "b"
    shutil.copytree(built, out)
    for index, (harm, _) in enumerate(DAMAGE.values()):
        harm(out / f"shard-{index:05d}.array_record")
    before = _digests(out)
    argv = _repair_argv(records.repair_command(out))[:-1]  # Without --repair.
    assert argv[-1] == "--verify"
    capsys.readouterr()
    assert build.main(argv) == 1
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1].split(" ")[0] for line in printed[:3]] == [
        f"{out}/shard-0000{i}.array_record" for i in range(3)
    ]
    assert printed[-1].endswith("3 bad: rerun with --repair to rebuild them")
    assert _digests(out) == before and not list(out.glob(".tmp-*"))


# --- Through the training command line.

STEPS = 6


def _train(built: Path, data: Path, workdir: Path, env: dict | None = None, **extra) -> object:
    overrides = dict(num_train_steps=STEPS, optimizer__decay="constant", data__eval_files="",
                     data__train_files=built, data__verify_shards=False)  # fmt: skip
    overrides.update(extra)
    flags = [
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        *tiny_overrides(data, **overrides),
    ]
    return run_module("pretrain.train", flags, check=False, env=env)


def _first_failing_batch(built: Path, data: Path) -> int | None:
    """The first train batch (0-based) that reads a damaged record, None when none of 0..5."""
    from data_pipeline import loader, vocab

    config = tiny_config(data)
    tokenizer = vocab.load(str(built / "tokenizer.model"))
    train, _ = loader.loaders(config.data, tokenizer, seed=config.seed, global_batch_size=8,
                              eval_batch_size=8, train_dir=str(built), eval_dir=None)  # fmt: skip
    for step in range(STEPS):
        try:
            train.batch(step)
        except DataError:
            return step
    return None


def _damage_a_shard_read_after_step_3(built: Path, data: Path) -> tuple[Path, int]:
    """Flips bytes in the first shard whose damage the run meets at step 4, 5 or 6."""
    for index in range(len(json.loads((built / records.MANIFEST).read_text())["units"])):
        shard = built / f"shard-{index:05d}.array_record"
        original = shard.read_bytes()
        _flip(shard)
        failing = _first_failing_batch(built, data)
        if failing is not None and failing >= 3:
            return shard, failing
        shard.write_bytes(original)
    raise AssertionError("no shard is first read at steps 4-6: change the corpus seed")


@pytest.mark.slow
def test_training_stops_in_one_line_and_resumes_exactly_after_repair(built, tmp_path):
    data, out = tmp_path / "data", tmp_path / "built"
    data.mkdir()
    shutil.copytree(built, out)
    pristine = _digests(out)
    reference = tmp_path / "reference"
    assert _train(out, data, reference).returncode == 0
    shard, failing = _damage_a_shard_read_after_step_3(out, data)

    workdir = tmp_path / "w"
    proc = _train(out, data, workdir)  # Meets the damage at step failing + 1.
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [x for x in lines if x.startswith("error: ")] == lines[-1:], proc.stderr[-3000:]
    line = lines[-1]
    assert re.match(rf"error: cannot read record \d+ of {re.escape(str(shard))} \(", line), line
    assert line.endswith("--verify --repair"), line
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [3] and sorted(read_metrics(workdir)[0]) == list(range(1, failing + 1))

    # With the start check: the same shard named before anything is compiled.
    proc = _train(out, data, workdir, env=LOG_COMPILES, data__verify_shards=True)
    assert_one_line_error(proc, f"(first: {shard}: damaged", "--verify --repair")

    repair = run_module("data_pipeline.build", _repair_argv(line), check=False)
    assert repair.returncode == 0, repair.stderr[-2000:]
    assert f"bad shard: {shard}: damaged" in repair.stdout and _digests(out) == pristine

    proc = _train(out, data, workdir, data__verify_shards=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resumed from" in proc.stderr and "at step 3." in proc.stderr
    expected, _ = read_metrics(reference)
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == list(range(1, STEPS + 1))
    for row in rows:  # The failed run's rows and the resumed run's alike.
        assert row["loss"] == expected[row["step"]]["loss"], row["step"]
    assert os.path.exists(workdir / "checkpoints" / str(STEPS))
