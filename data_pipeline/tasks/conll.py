"""Word-tagged sentences as read from CoNLL files, TFDS or plain text, before tokenization.

* CoNLL layout: one word per line, its label in the last whitespace-separated column (other
  columns, such as CoNLL-2003's part of speech and chunk, are ignored), a blank line between
  sentences; `-DOCSTART-` lines (document markers) are skipped. A line with one column has no
  label: an error naming the file and line.
* `tfds:NAME[:SPLIT]` (e.g. `tfds:conll2003`): `data.tokens_key` (words) and `data.label_key`
  (a sequence of `ClassLabel`s, whose names become the labels).
* Unlabelled text for prediction: one sentence per line, words split at white space, each word
  with its character offsets in the line.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from data_pipeline import tfds_source
from data_pipeline.errors import ConfigError, DataError, MissingInputError

DOCSTART = "-DOCSTART-"


@dataclasses.dataclass(frozen=True)
class Sentences:
    """Sentences as lists of words (and labels); `line[i]` locates sentence i in `source`."""

    source: str
    words: list[list[str]]
    labels: list[list[str]] | None  # None: unlabelled (prediction input).
    line: list[int]  # 1-based line of the sentence's first word, or TFDS record index.
    label_names: list[str] | None = None  # Declared by the source (TFDS ClassLabel).
    # Unlabelled text: per sentence, the (start, end) characters of each word in `texts`.
    spans: list[list[tuple[int, int]]] | None = None
    texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.words)

    def where(self, i: int, word: int = 0) -> str:
        if tfds_source.is_tfds_spec(self.source):
            return f"{self.source}, record {self.line[i]}"
        return f"{self.source}, line {self.line[i] + word}"


def read_conll(path: str) -> Sentences:
    """Reads a CoNLL file; DataError names the file and line of a row without a label."""
    if not os.path.isfile(path):
        raise MissingInputError(f"CoNLL file {path!r} not found: check data.train_file/eval_file.")
    words: list[list[str]] = []
    labels: list[list[str]] = []
    lines: list[int] = []
    current_words: list[str] = []
    current_labels: list[str] = []

    def end_sentence() -> None:
        if current_words:
            words.append(list(current_words))
            labels.append(list(current_labels))
            current_words.clear()
            current_labels.clear()

    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                row = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(
                    f"{path}, line {number}: not UTF-8 text; convert the file (iconv -t UTF-8)."
                ) from None
            if not row:
                end_sentence()
                continue
            fields = row.split()
            if fields[0] == DOCSTART:
                end_sentence()
                continue
            if len(fields) < 2:
                raise DataError(
                    f"{path}, line {number}: {row!r} has no label column; CoNLL lines are "
                    "'word ... label' (whitespace-separated, the label last)."
                )
            if not current_words:
                lines.append(number)
            current_words.append(fields[0])
            current_labels.append(fields[-1])
    end_sentence()
    if not words:
        raise DataError(f"{path} holds no sentences: expected 'word ... label' lines.")
    return Sentences(path, words, labels, lines)


def _text(value) -> str:
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def read_tfds(spec: str, tokens_key: str, label_key: str) -> Sentences:
    """Reads a TFDS split whose records hold a word sequence and a label sequence."""
    name, _ = tfds_source.parse_tfds_spec(spec)
    source = tfds_source.open_split(spec)
    features = source.dataset_info.features
    missing = [k for k in (tokens_key, label_key) if k not in features]
    if missing:
        raise ConfigError(
            f"TFDS dataset {name!r} has no feature {missing[0]!r} (it has {sorted(features)}): "
            "set data.tokens_key and data.label_key."
        )
    feature = features[label_key]
    names = getattr(getattr(feature, "feature", feature), "names", None)
    words, labels = [], []
    for i in range(len(source)):
        record = source[i]
        sentence = [_text(w) for w in record[tokens_key]]
        tags = [names[int(t)] if names else _text(t) for t in record[label_key]]
        if sentence:
            words.append(sentence)
            labels.append(tags)
    if not words:
        raise DataError(f"{spec} holds no sentences.")
    return Sentences(spec, words, labels, list(range(len(words))), names)


def read_sentences(spec: str, data_config) -> Sentences:
    """A CoNLL path or a `tfds:` spec, with feature names from `data_config` for TFDS."""
    if tfds_source.is_tfds_spec(spec):
        return read_tfds(spec, data_config.tokens_key, data_config.label_key)
    return read_conll(spec)


def read_text(path: str) -> Sentences:
    """Unlabelled input: each line one sentence, words split at white space (an empty line is
    a sentence of no words, so outputs stay aligned with input lines)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"input file {path!r} not found.")
    with open(path, encoding="utf-8") as f:
        texts = [line.rstrip("\r\n") for line in f]
    words, spans = [], []
    for text in texts:
        spans.append([m.span() for m in re.finditer(r"\S+", text)])
        words.append([text[a:b] for a, b in spans[-1]])
    return Sentences(path, words, None, list(range(1, len(texts) + 1)), spans=spans, texts=texts)
