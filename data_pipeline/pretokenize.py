"""Pretokenizes a large BERT-format corpus into shards, on every core and across hosts.

    python -m data_pipeline.pretokenize --input='gs://BUCKET/wiki/*.txt,gs://BUCKET/books/*.txt' \
        --tokenizer_model=PATH.model --output_dir=gs://BUCKET/pretokenized \
        [--num_workers=N] [--chunk_mb=64] [--process_index=I --process_count=P]

then train on it with `--config.data.train_files=OUTPUT_DIR` and
`--config.data.tokenizer_model=OUTPUT_DIR/tokenizer.model`: `loader.load_or_build_store` reads
the shards instead of tokenizing the text again.

Work is split into units: byte ranges of the input files (about `chunk_mb` each) that begin and
end right after a blank line, so no document straddles two units and the units, read in order,
hold exactly the documents `documents.iter_documents` reads from the same files. Process I of P
(one per host, all given the same flags) takes units I, I+P, I+2P, ... and tokenizes them on
`num_workers` local processes; each unit becomes one shard, written under a temporary name and
renamed when complete. `manifest.json` records the plan (inputs, units, tokenizer), so a rerun
with the same flags skips the shards that exist: an interrupted build resumes where it stopped.
Paths may be local or anything `etils.epath` opens (`gs://` included).

Layout of OUTPUT_DIR:

    manifest.json         format, tokenizer fingerprint, inputs, units (file, start, stop, shard)
    tokenizer.model       the tokenizer the shards were made with
    shard-NNNNN.npz       one unit: tokens int32 [T], sentence_lengths int32 [num_sentences],
                          document_sizes int32 [num_documents] (sentences per document)
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent import futures

import numpy as np
from absl import app, flags
from etils import epath

from data_pipeline import documents, files, instances
from data_pipeline.errors import ConfigError, DataError, MissingInputError, UserError
from data_pipeline.vocab.unigram import SentencePieceTokenizer

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"


# ------------------------------------------------------------------------------------------------
# Planning: inputs -> units


def resolve_inputs(spec: str) -> list[str]:
    """Sorted files of comma-separated globs; local globs as `documents.resolve_files` expands
    them, remote ones (`gs://...`) through epath (a glob in the last path component only)."""
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
    if documents.is_tfds_spec(spec):
        raise ConfigError(f"{spec!r}: pretokenize reads text files; tfds sources are not supported")
    local = [p for p in patterns if "://" not in p]
    found = set(documents.resolve_files(",".join(local))) if local else set()
    for pattern in patterns:
        if "://" in pattern:
            parent, _, name = pattern.rpartition("/")
            matches = [str(p) for p in epath.Path(parent).glob(name) if p.is_file()]
            if not matches:
                raise MissingInputError(f"no file matches {pattern!r}: check the path or glob")
            found.update(matches)
    return sorted(found)


def _is_blank(raw: bytes) -> bool:
    """A line that ends a document for `documents.iter_documents` (undecodable lines do not)."""
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def chunk_bounds(path: str, size: int, chunk_bytes: int) -> list[int]:
    """Offsets [0, ..., size] splitting the file about every `chunk_bytes`, each boundary just
    after a blank line (so between documents)."""
    bounds = [0]
    with epath.Path(path).open("rb") as f:
        target = chunk_bytes
        while target < size:
            f.seek(target - 1)
            f.readline()  # Now at the first line start at or after `target`.
            while (line := f.readline()) and not _is_blank(line):
                pass
            position = f.tell()
            if not line or position >= size:
                break
            bounds.append(position)
            target = position + chunk_bytes
    return bounds + [size]


def plan_units(paths: Sequence[str], chunk_bytes: int) -> list[dict]:
    """Units in document order: {'path', 'start', 'stop', 'shard'}."""
    units = []
    for path in paths:
        size = epath.Path(path).stat().length
        bounds = chunk_bounds(path, size, chunk_bytes)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            units.append(
                {"path": path, "start": start, "stop": stop, "shard": f"shard-{len(units):05d}.npz"}
            )
    return units


# ------------------------------------------------------------------------------------------------
# Workers: unit -> shard


def read_unit_documents(path: str, start: int, stop: int) -> list[list[str]]:
    """Documents of bytes [start, stop) of a file, parsed as `documents.iter_documents` does."""
    with epath.Path(path).open("rb") as f:
        f.seek(start)
        data = f.read(stop - start)
    result, document = [], []
    for raw in data.split(b"\n"):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue  # Skipped, as the in-memory reader does.
        if line:
            document.append(line)
        elif document:
            result.append(document)
            document = []
    if document:
        result.append(document)
    return result


class _OneThreadTokenizer:
    """The tokenizer with one encoding thread: the parallelism comes from the worker processes."""

    def __init__(self, model_path: str):
        self._tokenizer = SentencePieceTokenizer(model_path)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tokenizer.encode_batch(texts, num_threads=1)


@functools.cache
def _worker_tokenizer(model_path: str) -> _OneThreadTokenizer:
    return _OneThreadTokenizer(model_path)


def process_unit(unit: dict, tokenizer_model: str, output_dir: str) -> dict:
    """Tokenizes one unit into its shard; returns its counts for the progress line."""
    docs = instances.tokenize_documents(
        read_unit_documents(unit["path"], unit["start"], unit["stop"]),
        _worker_tokenizer(tokenizer_model),
    )
    sentences = [s for doc in docs for s in doc]
    buffer = io.BytesIO()
    np.savez(
        buffer,
        tokens=np.concatenate(sentences) if sentences else np.zeros(0, np.int32),
        sentence_lengths=np.array([len(s) for s in sentences], np.int32),
        document_sizes=np.array([len(doc) for doc in docs], np.int32),
    )
    files.write_bytes(epath.Path(output_dir) / unit["shard"], buffer.getvalue())
    return {
        "bytes": unit["stop"] - unit["start"],
        "documents": len(docs),
        "tokens": sum(len(s) for s in sentences),
    }


# ------------------------------------------------------------------------------------------------
# The build


class _Progress:
    """A one-line progress bar on stderr: shards, tokens, input MB/s, time left."""

    def __init__(self, total_units: int, total_bytes: int):
        self.total_units, self.total_bytes = total_units, total_bytes
        self.units = self.bytes = self.tokens = 0
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0

    def update(self, counts: dict) -> None:
        self.units += 1
        self.bytes += counts["bytes"]
        self.tokens += counts["tokens"]
        now = time.perf_counter()
        if not self.tty and now - self.last_line < 10 and self.units < self.total_units:
            return  # In logs, a line every 10 s.
        self.last_line = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.bytes / elapsed
        left = (self.total_bytes - self.bytes) / rate if rate else 0.0
        done = self.bytes / max(self.total_bytes, 1)
        bar = "#" * int(30 * done) + "-" * (30 - int(30 * done))
        line = (
            f"[{bar}] {self.units}/{self.total_units} shards, {self.tokens / 1e6:.1f}M tokens, "
            f"{rate / 2**20:.1f} MB/s, {time.strftime('%H:%M:%S', time.gmtime(left))} left"
        )
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=sys.stderr)
        if self.tty and self.units == self.total_units:
            print(file=sys.stderr)


def _write_manifest(out: epath.Path, manifest: dict) -> None:
    """Writes the plan, or checks that the one already there is the same build."""
    path = out / MANIFEST
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != manifest:
            changed = sorted(k for k in manifest if existing.get(k) != manifest[k])
            raise DataError(
                f"{out} holds a different pretokenized build (changed: {', '.join(changed)}): "
                "use a new --output_dir, or delete it to rebuild"
            )
        return
    files.write_bytes(path, json.dumps(manifest, indent=1).encode())


def pretokenize(
    input_spec: str,
    tokenizer_model: str,
    output_dir: str,
    *,
    chunk_mb: float = 64.0,
    num_workers: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> dict:
    """Builds (or finishes) this process's shards of OUTPUT_DIR; returns counts of the run.

    Every process must get the same arguments except `process_index`.
    """
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process_index={process_index} must be in [0, {process_count})")
    if chunk_mb <= 0:
        raise ConfigError(f"chunk_mb={chunk_mb} must be positive")
    tokenizer = SentencePieceTokenizer(tokenizer_model)  # Validates the model before any work.
    out = epath.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = resolve_inputs(input_spec)
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "inputs": [{"path": p, "bytes": epath.Path(p).stat().length} for p in inputs],
        "chunk_bytes": int(chunk_mb * 2**20),
        "units": plan_units(inputs, int(chunk_mb * 2**20)),
    }
    _write_manifest(out, manifest)
    if not (out / TOKENIZER_FILE).exists():
        files.write_bytes(out / TOKENIZER_FILE, epath.Path(tokenizer_model).read_bytes())

    mine = manifest["units"][process_index::process_count]
    existing = {p.name for p in out.glob("shard-*.npz")}
    pending = [u for u in mine if u["shard"] not in existing]
    progress = _Progress(len(pending), sum(u["stop"] - u["start"] for u in pending))
    work = functools.partial(process_unit, tokenizer_model=tokenizer_model, output_dir=str(out))
    num_workers = max(1, min(num_workers or os.cpu_count() or 1, len(pending)))
    totals = {"shards": len(mine), "skipped": len(mine) - len(pending), "documents": 0, "tokens": 0}
    # spawn: sentencepiece and the etils backends hold threads that fork would copy half-alive.
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        for counts in pool.map(work, pending):
            progress.update(counts)
            totals["documents"] += counts["documents"]
            totals["tokens"] += counts["tokens"]
    return totals


# ------------------------------------------------------------------------------------------------
# Reading (data_pipeline/loader.py)


def is_pretokenized(spec: str) -> bool:
    """Whether `spec` names a directory built by this module (one path holding a manifest)."""
    spec = spec.strip()
    if not spec or "," in spec or any(c in spec for c in "*?[") or documents.is_tfds_spec(spec):
        return False
    return (epath.Path(spec) / MANIFEST).exists()


def fingerprint(directory: str) -> str:
    """Hash of the build's manifest: keys caches of stores built from it."""
    return hashlib.sha256((epath.Path(directory) / MANIFEST).read_bytes()).hexdigest()


def _read_shard(path: epath.Path) -> list[list[np.ndarray]]:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
        tokens, lengths, sizes = data["tokens"], data["sentence_lengths"], data["document_sizes"]
    sentences = np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else []
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [sentences[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def read_documents(directory: str, tokenizer, num_threads: int = 16) -> list[list[np.ndarray]]:
    """Every document of a complete build, in input order: lists of int32 sentence arrays.

    Raises ValueError if shards are missing or `tokenizer` is not the one the build used.
    """
    out = epath.Path(directory)
    manifest = json.loads((out / MANIFEST).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{directory} has pretokenize format {manifest.get('format_version')}")
    if manifest["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise DataError(
            f"{directory} was pretokenized with another tokenizer: set "
            f"data.tokenizer_model={out / TOKENIZER_FILE}"
        )
    shards = [out / u["shard"] for u in manifest["units"]]
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise DataError(
            f"{directory} is incomplete: {len(missing)} of {len(shards)} shards missing (first: "
            f"{missing[0]}); rerun data_pipeline.pretokenize with the same flags to finish it"
        )
    with futures.ThreadPoolExecutor(num_threads) as pool:  # Object stores: reads in parallel.
        docs = [doc for shard in pool.map(_read_shard, shards) for doc in shard]
    if not docs:
        raise DataError(f"{directory} holds no text: every input file is empty")
    return docs


# ------------------------------------------------------------------------------------------------
# CLI


def _define_flags() -> None:
    flags.DEFINE_string("input", None, "Comma-separated globs of BERT text files (gs:// too).")
    flags.DEFINE_string("tokenizer_model", None, "Sentencepiece .model to tokenize with.")
    flags.DEFINE_string("output_dir", None, "Shared directory for shards and the manifest.")
    flags.DEFINE_float("chunk_mb", 64.0, "Input megabytes per shard (units of work).")
    flags.DEFINE_integer("num_workers", None, "Local worker processes (default: all CPUs).")
    flags.DEFINE_integer("process_index", 0, "This host's index, 0..process_count-1.")
    flags.DEFINE_integer("process_count", 1, "Hosts sharing the build (same flags on each).")
    flags.mark_flags_as_required(["input", "tokenizer_model", "output_dir"])


def main(argv: Sequence[str]) -> None:
    cli = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    start = time.perf_counter()
    try:
        totals = pretokenize(
            cli.input,
            cli.tokenizer_model,
            cli.output_dir,
            chunk_mb=cli.chunk_mb,
            num_workers=cli.num_workers,
            process_index=cli.process_index,
            process_count=cli.process_count,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"process {cli.process_index}: {totals['shards']} shards ({totals['skipped']} already "
        f"done), {totals['documents']} documents, {totals['tokens']} tokens written in "
        f"{time.perf_counter() - start:.1f} s to {cli.output_dir}"
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
