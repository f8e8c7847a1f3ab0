"""The built corpus on disk, and its random-access reader.

A built directory (written by `data_pipeline/shards.py`, through `python -m data_pipeline.build`
or on a first training start) holds:

    manifest.json              what was built: objective, parameters, tokenizer, inputs, units
    tokenizer.model | vocab.txt (+ tokenizer_config.json)   the tokenizer the ids come from
    shard-NNNNN.array_record   one unit's records (ArrayRecord, group_size 1: random access)
    shard-NNNNN.json           the shard's counts, bytes and sha256, written last: the shard is
                               complete (`integrity.py` checks the shard against it)

A record is one training example as little-endian int32:

    nsp     [len_a, is_random_next, tokens_a..., tokens_b...]
    packed  [k, len_1, ..., len_k, tokens...]     (k segments, the pieces of documents in a row)

`BuiltData` reads records by global index through grain's `ArrayRecordDataSource`, with the
shards' record counts from the sidecars (no file is opened to count) and each reader's index left
on disk (`index_storage_option: offloaded`): a training process holds no part of the corpus
beyond the records of its rows, whatever the corpus size. A record that cannot be read (a
damaged, truncated or missing shard) is a DataError naming the shard file, the record and the
command that repairs it.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import re
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from data_pipeline import tfds_source
from data_pipeline.errors import DataError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
OBJECTIVES = ("nsp", "packed")
# Writer options: one record per chunk (random access reads one record, not a group).
WRITER_OPTIONS = "group_size:1"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def encode_nsp(tokens_a: np.ndarray, tokens_b: np.ndarray, is_random_next: bool) -> bytes:
    head = np.array([len(tokens_a), int(is_random_next)], np.int32)
    return np.concatenate([head, tokens_a, tokens_b]).astype("<i4").tobytes()


def decode_nsp(record: bytes) -> tuple[np.ndarray, np.ndarray, bool]:
    values = np.frombuffer(record, "<i4")
    len_a, is_random_next = int(values[0]), bool(values[1])
    return values[2 : 2 + len_a], values[2 + len_a :], is_random_next


def encode_packed(tokens: np.ndarray, segment_lengths: np.ndarray) -> bytes:
    head = np.concatenate([[len(segment_lengths)], segment_lengths])
    return np.concatenate([head, tokens]).astype("<i4").tobytes()


def decode_packed(record: bytes) -> tuple[np.ndarray, np.ndarray]:
    values = np.frombuffer(record, "<i4")
    k = int(values[0])
    return values[1 + k :], values[1 : 1 + k]


def is_built_dir(spec: str) -> bool:
    """Whether `spec` names a built directory (one path holding a manifest)."""
    spec = spec.strip()
    if not spec or "," in spec or any(c in spec for c in "*?[") or tfds_source.is_tfds_spec(spec):
        return False
    return (epath.Path(spec) / MANIFEST).exists()


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = epath.Path(directory) / MANIFEST
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{directory} was built by another version of this code (format "
            f"{manifest.get('format_version')}, this code reads {FORMAT_VERSION}): rebuild it "
            "with python -m data_pipeline.build"
        )
    return manifest


def shard_counts(directory: str | os.PathLike, units: Sequence[dict]) -> dict[int, dict]:
    """{unit index: its sidecar counts} of the complete shards."""
    out = {}
    for unit in units:
        sidecar = epath.Path(directory) / f"{shard_name(unit['index'])}.json"
        if sidecar.exists():
            out[unit["index"]] = json.loads(sidecar.read_text())
    return out


@dataclasses.dataclass(frozen=True)
class _Shard:
    """The FileInstruction protocol of array_record: a whole file of known size."""

    filename: str
    skip: int
    take: int
    examples_in_shard: int


class BuiltData:
    """Random access to the records of a complete built directory."""

    def __init__(self, directory: str | os.PathLike):
        from grain import sources  # Imported here: the build workers need not load grain.

        self.directory = epath.Path(directory)
        self.manifest = read_manifest(directory)
        self.objective: str = self.manifest["objective"]
        self.params: dict[str, Any] = self.manifest["params"]
        units = self.manifest["units"]
        counts = shard_counts(directory, units)
        missing = [u["index"] for u in units if u["index"] not in counts]
        if missing:
            raise DataError(
                f"{directory} is incomplete: {len(missing)} of {len(units)} shards missing (first: "
                f"{shard_name(missing[0])}); build them: {repair_command(directory)}"
            )
        shards = [
            _Shard(str(self.directory / f"{shard_name(i)}.array_record"), 0, n, n)
            for i, n in ((u["index"], counts[u["index"]]["records"]) for u in units)
            if n
        ]
        self._shards = shards
        self._starts = np.cumsum([0] + [s.take for s in shards]).tolist()  # Global index bases.
        self.num_records = sum(s.take for s in shards)
        if not self.num_records:
            raise DataError(f"{directory} holds no examples: its inputs hold no usable text")
        self._source = sources.ArrayRecordDataSource(
            shards,
            reader_options={"index_storage_option": "offloaded", "footer_prefetch_bytes": "0"},
        )
        self.records_read = 0  # Records fetched so far (what a process reads is what it needs).

    def __len__(self) -> int:
        return self.num_records

    def read(self, indices: Sequence[int]) -> list[bytes]:
        """The records at global `indices`, in that order."""
        indices = [int(i) for i in indices]
        self.records_read += len(indices)
        try:
            return list(self._source.__getitems__(indices)) if indices else []
        except (RuntimeError, OSError) as e:  # array_record's errors: corrupt, cut short, absent
            raise self._unreadable(indices, e) from e

    def _unreadable(self, indices: list[int], error: Exception) -> DataError:
        """The DataError naming the first record of `indices` that cannot be read."""
        for i in indices:  # The batch read failed: find the record, one read at a time.
            try:
                self._source[i]
            except (RuntimeError, OSError) as e:
                index, error = i, e
                break
        else:
            index = indices[0]
        shard = bisect.bisect_right(self._starts, index) - 1
        # Riegeli's first clause says what is wrong; its hashes and offsets help no user.
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0].split("; ")[0]
        cause = re.sub(r" \(computed [^)]*\)", "", cause)
        return DataError(
            f"cannot read record {index - self._starts[shard]} of {self._shards[shard].filename}"
            f" ({cause}): the shard is damaged or missing; repair it, then rerun to resume from "
            f"the newest complete checkpoint: {repair_command(self.directory)}"
        )


def repair_command(directory: str | os.PathLike) -> str:
    """`python -m data_pipeline.build` with the directory's build flags, `--verify --repair`.

    Every recipe flag the manifest records is spelled out (this module sits below the builder
    and does not know its defaults); the tokenizer is the copy inside the directory, the input
    the `--input` the build was given (run it from the folder the build ran in).
    """
    directory = epath.Path(directory)
    manifest = read_manifest(directory)
    spec = manifest.get("input_spec") or ",".join(
        i.get("path") or i.get("tfds", "") for i in manifest["inputs"]
    )
    tokenizer = directory / (
        "vocab.txt" if (directory / "vocab.txt").exists() else "tokenizer.model"
    )
    flags = [f"--input={spec}", f"--output_dir={directory}", f"--tokenizer_model={tokenizer}"]
    flags += [f"--{k}={v}" for k, v in manifest["params"].items()]
    unit_mb = manifest["unit_bytes"] / 2**20  # Exact: the build's int(unit_mb * 2**20) again.
    flags.append(f"--unit_mb={int(unit_mb) if unit_mb.is_integer() else unit_mb!r}")
    words = ["python", "-m", "data_pipeline.build", *flags, "--verify", "--repair"]
    return " ".join(shlex.quote(w) for w in words)
