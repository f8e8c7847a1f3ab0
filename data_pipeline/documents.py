"""Reads raw text into documents: lists of sentences.

Two sources, chosen by the spec string:

* comma-separated globs of BERT text files: one sentence per line, a blank line between
  documents (a file boundary also ends a document);
* `tfds:NAME[:SPLIT]`: a TFDS dataset read through `tfds.data_source` (random access, no
  TensorFlow needed); each record's text feature is one document, split into sentences on
  newlines and by `split_sentences`. NAME may carry a config and a version
  (`wikipedia/20230601.en:1.0.0:train`) when SPLIT is given; the split defaults to 'train'.

The order is deterministic (sorted file list, record order), so instance building downstream is
a pure function of the spec and the seed.
"""

import glob
import os
import re
from collections.abc import Iterator

from absl import logging

from data_pipeline import tfds_source
from data_pipeline.errors import ConfigError, DataError, MissingInputError
from data_pipeline.tfds_source import is_tfds_spec, parse_tfds_spec

# Sentence end: terminal punctuation, optional closing quotes/brackets, whitespace, then something
# that can start a sentence. Good enough for web text; BERT-format files are already split.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]”’]*\s+(?=[\"'(\[“‘]?[A-Z0-9])")
# Words that end in a period without ending a sentence ('Dr. Smith', 'e.g. This').
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e inc ltd co corp no fig al approx jan feb mar apr "
    "jun jul aug sep sept oct nov dec".split()
)


def resolve_files(spec: str) -> list[str]:
    """Expands comma-separated globs into a sorted, de-duplicated list of files.

    Raises FileNotFoundError naming the first glob that matches no file.
    """
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
    if not patterns:
        raise ConfigError("no input files given: pass comma-separated globs of text files")
    files = set()
    for pattern in patterns:
        found = glob.glob(os.path.expanduser(pattern))
        matches = [m for m in found if os.path.isfile(m)]
        if not matches:
            if found and all(os.path.isdir(m) for m in found):
                raise MissingInputError(
                    f"{pattern!r} is a folder, not a file: name the files in it with a glob, "
                    f"e.g. '{os.path.join(pattern, '*.txt')}'"
                )
            raise MissingInputError(f"no file matches {pattern!r}: check the path or glob")
        files.update(matches)
    return sorted(files)


def split_sentences(text: str) -> list[str]:
    """Splits text into sentences: on newlines, then after '.', '!' or '?' before a capital.

    A period after a known abbreviation or a single capital letter (an initial) does not split.
    """
    sentences = []
    for paragraph in text.splitlines():
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            words = paragraph[start : match.start() + 1].split()
            last_word = words[-1].lower().rstrip(".") if words else ""
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue
            sentences.append(paragraph[start : match.end()].strip())
            start = match.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def _open_input(path: str):
    """`open(path, 'rb')`, with a file the user cannot read reported as a MissingInputError."""
    try:
        return open(path, "rb")
    except PermissionError as e:
        raise MissingInputError(
            f"cannot read {path!r} ({e.strerror}): fix its permissions or copy it elsewhere"
        ) from None


def _iter_file_documents(paths: list[str]) -> Iterator[list[str]]:
    """Yields the documents of BERT-format text files, skipping lines that are not UTF-8.

    A file where at least half the lines are not UTF-8 is not text (an archive, a binary, another
    encoding): DataError naming it, rather than training on the few lines that happen to decode.
    """
    bad_lines, bad_files = 0, 0
    for path in paths:
        bad_in_file, good_in_file = 0, 0
        document: list[str] = []
        with _open_input(path) as f:
            for raw in f:
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    bad_in_file += 1
                    continue
                good_in_file += 1
                if line:
                    document.append(line)
                elif document:
                    yield document
                    document = []
        if bad_in_file and bad_in_file >= good_in_file:
            raise DataError(
                f"{path!r} is not UTF-8 text ({bad_in_file} of {bad_in_file + good_in_file} "
                "lines are not valid UTF-8): pass text files with one sentence per line, or "
                "convert it with iconv"
            )
        if document:
            yield document
        if bad_in_file:
            bad_lines += bad_in_file
            bad_files += 1
    if bad_lines:
        logging.warning(
            "Skipped %d line(s) that are not valid UTF-8 in %d file(s).", bad_lines, bad_files
        )


def record_sentences(record: dict, text_feature: str, name: str) -> list[str]:
    """The sentences of one TFDS record's `text_feature` (ConfigError if it has none)."""
    if text_feature not in record:
        raise ConfigError(
            f"TFDS dataset {name!r} has no feature {text_feature!r} (it has "
            f"{sorted(record)}): set data.tfds_text_feature"
        )
    text = record[text_feature]
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return split_sentences(str(text))


def _iter_tfds_documents(spec: str, text_feature: str) -> Iterator[list[str]]:
    """Yields one document per record of a TFDS split, read by random access."""
    name, _ = parse_tfds_spec(spec)
    source = tfds_source.open_split(spec)
    for i in range(len(source)):
        if sentences := record_sentences(source[i], text_feature, name):
            yield sentences


def iter_documents(spec: str, *, text_feature: str = "text") -> Iterator[list[str]]:
    """Yields the documents named by `spec` (see the module docstring), in a fixed order.

    Raises DataError at the end if the source holds no text at all.
    """
    if is_tfds_spec(spec):
        documents = _iter_tfds_documents(spec, text_feature)
    else:
        documents = _iter_file_documents(resolve_files(spec))
    count = 0
    for document in documents:
        count += 1
        yield document
    if count == 0:
        raise DataError(f"{spec!r} holds no text: every file or record is empty")


def read_documents(spec: str, *, text_feature: str = "text") -> list[list[str]]:
    """Reads every document named by `spec` into memory: a list of documents of sentences."""
    return list(iter_documents(spec, text_feature=text_feature))
