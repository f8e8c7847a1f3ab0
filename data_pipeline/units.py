"""Units of work for building a corpus: each becomes one shard, independently of the others.

A unit is a byte range of a text file that begins and ends right after a blank line (so no
document straddles two units), or a range of record indices of a TFDS split. Read in order, the
units hold exactly the documents `documents.iter_documents` reads from the same inputs. A worker
needs only its unit in memory, whatever the size of the corpus.

Lines that cannot be text are skipped and counted, not fatal: a line that is not UTF-8, and a line
longer than `MAX_LINE_BYTES` (a binary blob or a file without newlines is not a sentence). A unit
where most lines (and at least 20) are not UTF-8 is a file of another kind: an error naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from etils import epath

from data_pipeline import documents, tfds_source
from data_pipeline.errors import ConfigError, DataError, MissingInputError

MAX_LINE_BYTES = 1 << 20  # 1 MiB: longer "lines" are skipped (counted) rather than tokenized.
TFDS_RECORDS_PER_UNIT = 20_000
_SNIFF_BYTES = 1 << 18  # The start of every input, checked before the build starts.
_MIN_BAD_LINES = 20  # A unit with at least this many bad lines, and more bad than good: not text.


@dataclasses.dataclass
class UnitText:
    """The documents of one unit, and what was skipped reading it."""

    documents: list[list[str]]
    bad_utf8_lines: int = 0
    long_lines: int = 0


def resolve_inputs(spec: str) -> list[str]:
    """Sorted files of comma-separated globs; local globs as `documents.resolve_files` expands
    them, remote ones (`gs://...`) through epath (a glob in the last path component only)."""
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
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


def plan_units(spec: str, unit_bytes: int) -> list[dict[str, Any]]:
    """The units of `spec` (text globs or one `tfds:NAME[:SPLIT]`), in document order.

    Each unit is a dict (JSON in the build's manifest): `index`, and either `path`, `start`,
    `stop` (bytes) or `tfds`, `start`, `stop` (records).
    """
    if unit_bytes <= 0:
        raise ConfigError(f"unit size must be positive, got {unit_bytes} bytes")
    units = []
    if tfds_source.is_tfds_spec(spec):
        total = len(tfds_source.open_split(spec))
        for start in range(0, total, TFDS_RECORDS_PER_UNIT):
            stop = min(start + TFDS_RECORDS_PER_UNIT, total)
            units.append({"tfds": spec.strip(), "start": start, "stop": stop})
    else:
        for path in resolve_inputs(spec):
            size = epath.Path(path).stat().length
            bounds = chunk_bounds(path, size, unit_bytes) if size else [0, 0]
            units += [{"path": path, "start": a, "stop": b} for a, b in zip(bounds, bounds[1:])]
    return [{"index": i, **unit} for i, unit in enumerate(units)]


def _text_documents(path: str, start: int, stop: int) -> UnitText:
    with epath.Path(path).open("rb") as f:
        f.seek(start)
        data = f.read(stop - start)
    return _text_documents_of(path, data, start, stop)


def _text_documents_of(path: str, data: bytes, start: int, stop: int) -> UnitText:
    """The documents of bytes `data` (= [start, stop) of `path`, for messages)."""
    out, document, good = UnitText([]), [], 0
    for raw in data.split(b"\n"):
        if len(raw) > MAX_LINE_BYTES:
            out.long_lines += 1
            continue
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            out.bad_utf8_lines += 1
            continue
        good += 1
        if line:
            document.append(line)
        elif document:
            out.documents.append(document)
            document = []
    if document:
        out.documents.append(document)
    if out.bad_utf8_lines >= max(good, _MIN_BAD_LINES):
        raise DataError(
            f"{path!r} is not UTF-8 text ({out.bad_utf8_lines} of {out.bad_utf8_lines + good} "
            f"lines in bytes {start}-{stop} are not valid UTF-8): pass text files with one "
            "sentence per line, or convert it with iconv"
        )
    return out


def _tfds_documents(spec: str, start: int, stop: int, text_feature: str) -> UnitText:
    source = tfds_source.open_split(spec)
    out = UnitText([])
    for i in range(start, stop):
        if sentences := documents.record_sentences(source[i], text_feature, spec):
            out.documents.append(sentences)
    return out


def read_unit(unit: dict[str, Any], text_feature: str = "text") -> UnitText:
    """The documents (lists of sentences) of one unit."""
    if "tfds" in unit:
        return _tfds_documents(unit["tfds"], unit["start"], unit["stop"], text_feature)
    return _text_documents(unit["path"], unit["start"], unit["stop"])


def check_readable(spec: str) -> None:
    """Fails fast, before any worker starts, on inputs that cannot be read or hold no bytes."""
    if tfds_source.is_tfds_spec(spec):
        tfds_source.open_split(spec)
        return
    paths: Sequence[str] = resolve_inputs(spec)
    for path in paths:
        try:
            with epath.Path(path).open("rb") as f:
                head = f.read(_SNIFF_BYTES)
        except PermissionError as e:
            raise MissingInputError(
                f"cannot read {path!r} ({e.strerror}): fix its permissions or copy it elsewhere"
            ) from None
        # The unit readers say the same of any part of a file; checked here for the start of each
        # file too, so a binary input fails before any worker starts.
        _text_documents_of(path, head, 0, len(head))
    if not any(epath.Path(p).stat().length for p in paths):
        raise DataError(f"{spec!r} holds no text: every file is empty")
