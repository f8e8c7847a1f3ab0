"""Building a corpus into shards: one recipe, one shard-building function, any executor.

`build_shard(unit, ...)` turns one unit of input (`data_pipeline/units.py`) into one shard: it
reads the unit's documents, tokenizes them, builds NSP instances (`nsp.py`) or packed rows
(`packing.py`), shuffles them and writes `shard-NNNNN.array_record`, then its sidecar
`shard-NNNNN.json` (its counts, byte size and sha256). Every shard is a pure function of
(unit, recipe, seed): the randomness of unit i is `default_rng([seed, BUILD, i])`, so any
number of workers, in any order, write the same bytes. Apache Beam runs it on many workers
(`python -m data_pipeline.build`); `build_locally` runs it in this process (the first start of a
training run on a small corpus). A worker holds one unit in memory, never the corpus.

`prepare` writes the manifest (or checks that the one there describes the same build, so a
different build into the same directory is refused) and returns the units still to build: a
rerun of an interrupted build does only what is missing. `check_complete` records the finished
set (each shard's size and sha256) in the manifest; `data_pipeline/integrity.py` checks shards
against it and repairs them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from typing import Any

import numpy as np
from etils import epath

from data_pipeline import files, nsp, packing, records, units, vocab
from data_pipeline.errors import ConfigError, DataError
from data_pipeline.order import BUILD

TOKENIZER_FILES = ("tokenizer.model", "vocab.txt", "tokenizer_config.json")
# Manifest keys that describe a build without defining it: not compared when a build reruns.
# input_spec: the --input as given (the repair command repeats it); shards: the finished set.
DESCRIPTIVE = ("input_spec", "shards")
DEFAULT_UNIT_MB = 64.0  # Input megabytes per shard unless the build says otherwise.


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a shard depends on besides its unit (all of it goes into the manifest)."""

    objective: str = "nsp"  # 'nsp' (sentence pairs) | 'packed' (full rows, MLM only)
    max_seq_length: int = 128
    short_seq_prob: float = 0.1  # nsp only
    random_next_prob: float = 0.5  # nsp only
    dupe_factor: int = 1  # nsp only: passes over each unit
    seed: int = 0
    text_feature: str = "text"  # The text feature of a tfds: source.

    def __post_init__(self):
        if self.objective not in records.OBJECTIVES:
            raise ConfigError(
                f"objective={self.objective!r} is not supported: use one of "
                f"{', '.join(records.OBJECTIVES)}."
            )
        if self.max_seq_length < 8:
            raise ConfigError(f"max_seq_length={self.max_seq_length} is too short: use >= 8.")
        if self.dupe_factor < 1:
            raise ConfigError(f"dupe_factor={self.dupe_factor} must be at least 1.")


@functools.cache
def _tokenizer(directory: str) -> vocab.Tokenizer:
    """The build's tokenizer, loaded once per worker process (from a local copy if remote)."""
    source = epath.Path(directory)
    local = source
    if "://" in directory:
        local = epath.Path(tempfile.mkdtemp(prefix="bert-build-tokenizer-"))
        for name in TOKENIZER_FILES:
            if (source / name).exists():
                (source / name).copy(local / name)
    name = "vocab.txt" if (local / "vocab.txt").exists() else "tokenizer.model"
    return vocab.load(str(local / name))


class _Encoder:
    """The tokenizer's `encode_batch` with a fixed number of threads (one per Beam worker)."""

    def __init__(self, tokenizer: vocab.Tokenizer, threads: int):
        self.tokenizer, self.threads = tokenizer, threads

    def encode_batch(self, texts):
        return self.tokenizer.encode_batch(texts, num_threads=self.threads)


def build_shard(
    unit: dict[str, Any], output_dir: str, recipe: Recipe, encode_threads: int = 1
) -> dict[str, Any]:
    """Builds the shard of `unit` into `output_dir`; returns its counts (also its sidecar)."""
    tokenizer = _tokenizer(output_dir)
    text = units.read_unit(unit, recipe.text_feature)
    docs = nsp.tokenize_documents(text.documents, _Encoder(tokenizer, encode_threads))
    rng = np.random.default_rng([recipe.seed, BUILD, unit["index"]])
    if recipe.objective == "nsp":
        examples = nsp.unit_instances(
            docs,
            rng=rng,
            max_seq_length=recipe.max_seq_length,
            short_seq_prob=recipe.short_seq_prob,
            random_next_prob=recipe.random_next_prob,
            dupe_factor=recipe.dupe_factor,
        )
        encoded = [records.encode_nsp(*example) for example in examples]
    else:
        rows = packing.pack_documents(
            docs,
            max_seq_length=recipe.max_seq_length,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
        )
        encoded = [records.encode_packed(*rows[i]) for i in rng.permutation(len(rows))]
    name = records.shard_name(unit["index"])
    size, sha256 = _write_shard(epath.Path(output_dir) / f"{name}.array_record", encoded)
    counts = {
        "records": len(encoded),
        "documents": len(docs),
        "tokens": int(sum(len(s) for doc in docs for s in doc)),
        "bad_utf8_lines": text.bad_utf8_lines,
        "long_lines": text.long_lines,
        "bytes": size,
        "sha256": sha256,
    }
    files.write_text(epath.Path(output_dir) / f"{name}.json", json.dumps(counts))
    return counts


def _write_shard(path: epath.Path, encoded: list[bytes]) -> tuple[int, str]:
    """Writes the records to a temporary name, then renames: a shard is there whole or not.
    Returns the file's (bytes, sha256), taken from the local copy before it moves."""
    from array_record.python.array_record_module import ArrayRecordWriter

    local = "://" not in os.fspath(path)
    tmp_dir = path.parent if local else epath.Path(tempfile.mkdtemp(prefix="bert-shard-"))
    tmp = tmp_dir / f".tmp-{path.name}-{os.getpid()}"
    writer = ArrayRecordWriter(os.fspath(tmp), records.WRITER_OPTIONS)
    for record in encoded:
        writer.write(record)
    writer.close()
    size_and_sha256 = files.size_and_sha256(tmp)
    if local:
        os.replace(tmp, path)
    else:
        tmp.copy(path, overwrite=True)
        tmp.unlink()
    return size_and_sha256


def _input_record(spec: str) -> list[dict[str, Any]]:
    if units.tfds_source.is_tfds_spec(spec):
        return [{"tfds": spec.strip()}]
    return [{"path": p, "bytes": epath.Path(p).stat().length} for p in units.resolve_inputs(spec)]


def prepare(
    input_spec: str,
    output_dir: str,
    tokenizer_path: str,
    recipe: Recipe,
    unit_bytes: int,
) -> list[dict[str, Any]]:
    """Writes (or checks) the manifest and the tokenizer copy; returns the units left to build.

    DataError when `output_dir` holds a different build (other inputs, tokenizer or recipe).
    """
    tokenizer = vocab.load(tokenizer_path)  # Validates it before any work.
    units.check_readable(input_spec)
    out = epath.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format_version": records.FORMAT_VERSION,
        "objective": recipe.objective,
        "params": dataclasses.asdict(recipe),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "inputs": _input_record(input_spec),
        "unit_bytes": unit_bytes,
        "units": units.plan_units(input_spec, unit_bytes),
    }
    path = out / records.MANIFEST
    if path.exists():
        existing = json.loads(path.read_text())
        existing = {k: v for k, v in existing.items() if k not in DESCRIPTIVE}
        if existing != manifest:
            changed = sorted(k for k in manifest if existing.get(k) != manifest[k])
            raise DataError(
                f"{output_dir} holds a different build (changed: {', '.join(changed)}): use a "
                "new --output_dir, or delete it to rebuild"
            )
    else:
        _copy_tokenizer(tokenizer_path, out)
        files.write_text(path, json.dumps({**manifest, "input_spec": input_spec}, indent=1))
    for leftover in out.glob(".tmp-*"):  # Half-written shards of an interrupted build.
        leftover.unlink()
    done = records.shard_counts(output_dir, manifest["units"])
    return [u for u in manifest["units"] if u["index"] not in done]


def _copy_tokenizer(tokenizer_path: str, out: epath.Path) -> None:
    source = epath.Path(tokenizer_path)
    if source.name.endswith(".txt"):  # WordPiece: the vocabulary and its options.
        files.write_bytes(out / "vocab.txt", source.read_bytes())
        options = source.parent / "tokenizer_config.json"
        if options.exists():
            files.write_bytes(out / "tokenizer_config.json", options.read_bytes())
    else:
        files.write_bytes(out / "tokenizer.model", source.read_bytes())


def summary(output_dir: str) -> dict[str, int]:
    """Totals of the complete shards (a build is complete when every unit has one)."""
    manifest = records.read_manifest(output_dir)
    counts = records.shard_counts(output_dir, manifest["units"])
    keys = ("records", "documents", "tokens", "bad_utf8_lines", "long_lines")
    totals = {k: sum(c.get(k, 0) for c in counts.values()) for k in keys}
    totals.update(shards=len(counts), units=len(manifest["units"]))
    return totals


def check_complete(output_dir: str, objective: str) -> dict[str, int]:
    """The totals of a finished build, whose shard set (sizes, sha256) it records in the
    manifest; DataError when it cannot train anything."""
    totals = summary(output_dir)
    if totals["shards"] < totals["units"]:
        raise DataError(f"{output_dir} is incomplete: rerun the same build to finish it")
    _record_shard_set(output_dir)
    if objective == "nsp" and totals["documents"] < 2:
        raise DataError(
            f"NSP needs at least 2 documents with text, got {totals['documents']}: add documents "
            "(separated by a blank line) to the input"
        )
    if not totals["records"]:
        raise DataError(f"{output_dir}: the inputs hold no text to train on")
    return totals


def _record_shard_set(output_dir: str) -> None:
    """Writes {shard name: {bytes, sha256}} into the manifest, once per finished set."""
    manifest = records.read_manifest(output_dir)
    counts = records.shard_counts(output_dir, manifest["units"])
    found = {
        records.shard_name(i): {"bytes": c["bytes"], "sha256": c["sha256"]}
        for i, c in sorted(counts.items())
        if "sha256" in c  # Shards built before checksums were recorded have none.
    }
    if manifest.get("shards") != found:
        manifest["shards"] = found
        files.write_text(epath.Path(output_dir) / records.MANIFEST, json.dumps(manifest, indent=1))


def build_locally(
    input_spec: str, output_dir: str, tokenizer_path: str, recipe: Recipe, unit_bytes: int
) -> dict[str, int]:
    """The whole build in this process (small corpora: training's first start, tests)."""
    start = time.perf_counter()
    for unit in prepare(input_spec, output_dir, tokenizer_path, recipe, unit_bytes):
        build_shard(unit, output_dir, recipe, encode_threads=-1)
    totals = check_complete(output_dir, recipe.objective)
    totals["seconds"] = round(time.perf_counter() - start, 3)
    return totals


def cache_key(input_spec: str, tokenizer: vocab.Tokenizer, recipe: Recipe, unit_bytes: int) -> str:
    """Names the cache folder of a build from text: any change of inputs (paths, sizes, times),
    tokenizer or recipe gives a new folder."""
    if units.tfds_source.is_tfds_spec(input_spec):
        source: list = [input_spec.strip()]
    else:
        stats = [(p, epath.Path(p).stat()) for p in units.resolve_inputs(input_spec)]
        source = [
            (os.path.abspath(p) if "://" not in p else p, s.length, s.mtime) for p, s in stats
        ]
    key = [source, tokenizer.fingerprint, dataclasses.asdict(recipe), unit_bytes]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
