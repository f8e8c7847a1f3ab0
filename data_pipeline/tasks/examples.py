"""Labelled text examples as read from a TSV file or a TFDS split, before tokenization.

* TSV, one example per line: `label<TAB>text` or `label<TAB>text_a<TAB>text_b` (every line of a
  file has the same number of columns; blank lines are skipped);
* `tfds:NAME[:SPLIT]` (e.g. `tfds:glue/sst2`, `tfds:glue/mrpc:validation`), read by random access;
  `data.text_a_key`, `data.text_b_key` (empty: single sentences) and `data.label_key` name the
  features, and a `ClassLabel` feature contributes its class names.

`check_label_column` catches the two silent mistakes of hand-made files: a header row (skipped
with a warning when it looks like one, or as `data.has_header` says) and a label column that
holds text (swapped columns), which would otherwise train a classifier of hundreds of classes.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
from absl import logging

from data_pipeline import tfds_source
from data_pipeline.errors import ConfigError, DataError, MissingInputError


@dataclasses.dataclass(frozen=True)
class RawExamples:
    """Examples as read, before tokenization; `line[i]` locates example i in `source`."""

    source: str  # File path or TFDS spec, for error messages.
    text_a: list[str]
    text_b: list[str] | None  # None for single-sentence tasks.
    label: list[str]
    line: list[int]  # 1-based TSV line, or TFDS record index.
    label_names: list[str] | None = None  # Class names declared by the source (TFDS ClassLabel).

    def __len__(self) -> int:
        return len(self.label)

    def where(self, i: int) -> str:
        unit = "record" if tfds_source.is_tfds_spec(self.source) else "line"
        return f"{self.source}, {unit} {self.line[i]}"


def read_tsv(path: str) -> RawExamples:
    """Reads `label<TAB>text[<TAB>text_b]` lines; a bad row is a DataError naming file and line."""
    if not os.path.isfile(path):
        raise MissingInputError(f"TSV file {path!r} not found: check data.train_file/eval_file.")
    text_a, text_b, labels, lines = [], [], [], []
    columns = None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                row = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(
                    f"{path}, line {number}: not UTF-8 text; convert the file (iconv -t UTF-8)."
                ) from None
            if not row.strip():
                continue
            fields = row.split("\t")
            if len(fields) not in (2, 3):
                raise DataError(
                    f"{path}, line {number}: {len(fields)} tab-separated columns; expected "
                    "'label<TAB>text' or 'label<TAB>text_a<TAB>text_b'."
                )
            if columns is None:
                columns = len(fields)
            elif len(fields) != columns:
                raise DataError(
                    f"{path}, line {number}: {len(fields)} columns, but earlier lines have "
                    f"{columns}; every line of a file must have the same layout."
                )
            label = fields[0].strip()
            if not label:
                raise DataError(f"{path}, line {number}: empty label in the first column.")
            labels.append(label)
            text_a.append(fields[1])
            if columns == 3:
                text_b.append(fields[2])
            lines.append(number)
    if not labels:
        raise DataError(f"{path} holds no examples: expected 'label<TAB>text' lines.")
    return RawExamples(path, text_a, text_b if columns == 3 else None, labels, lines)


def _as_text(value) -> str:
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def read_tfds(spec: str, text_a_key: str, text_b_key: str, label_key: str) -> RawExamples:
    """Reads a TFDS split by random access; integer ClassLabel values become their names."""
    name, _ = tfds_source.parse_tfds_spec(spec)
    source = tfds_source.open_split(spec)
    features = source.dataset_info.features
    keys = [text_a_key, label_key] + ([text_b_key] if text_b_key else [])
    missing = [k for k in keys if k not in features]
    if missing:
        raise ConfigError(
            f"TFDS dataset {name!r} has no feature {missing[0]!r} (it has {sorted(features)}): "
            "set data.text_a_key, data.text_b_key and data.label_key."
        )
    names = list(features[label_key].names) if hasattr(features[label_key], "names") else None
    text_a, text_b, labels = [], [], []
    for i in range(len(source)):
        record = source[i]
        label = record[label_key]
        if names is not None:
            index = int(label)
            if not 0 <= index < len(names):
                raise DataError(
                    f"{spec}, record {i}: label {index} is not a class of {name!r} (GLUE test "
                    "splits are unlabelled, -1): evaluate on a labelled split (validation)."
                )
            labels.append(names[index])
        else:
            labels.append(_as_text(label))
        text_a.append(_as_text(record[text_a_key]))
        if text_b_key:
            text_b.append(_as_text(record[text_b_key]))
    if not labels:
        raise DataError(f"{spec} holds no examples.")
    records = list(range(len(labels)))
    return RawExamples(spec, text_a, text_b if text_b_key else None, labels, records, names)


def read_examples(spec: str, data_config) -> RawExamples:
    """A TSV path or a `tfds:` spec, with feature names from `data_config` for TFDS."""
    if tfds_source.is_tfds_spec(spec):
        return read_tfds(
            spec, data_config.text_a_key, data_config.text_b_key, data_config.label_key
        )
    return read_tsv(spec)


def _looks_like_header(labels: list[str]) -> bool:
    """The first label occurs once while every other label occurs at least twice."""
    counts = collections.Counter(labels)
    others = [n for label, n in counts.items() if label != labels[0]]
    return len(labels) >= 6 and counts[labels[0]] == 1 and bool(others) and min(others) >= 2


def parses_as(kind: type, text: str) -> bool:
    """Whether `kind(text)` succeeds: `int` for integer class ids, `float` for scores."""
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _drop_first(examples: RawExamples) -> RawExamples:
    return dataclasses.replace(
        examples,
        text_a=examples.text_a[1:],
        text_b=None if examples.text_b is None else examples.text_b[1:],
        label=examples.label[1:],
        line=examples.line[1:],
    )


def skip_header(
    examples: RawExamples, task: str, has_header: bool | None, known: list[str] | None = None
) -> RawExamples:
    """The examples without a header row: the first one if `has_header`, or when None (auto) if
    it looks like one (its label unseen elsewhere while every other label repeats; for regression
    a non-number above numbers; for an eval file, a label the training data lacks and the header
    name of the training file). A TFDS source has no header."""
    if tfds_source.is_tfds_spec(examples.source) or has_header is False or len(examples) < 2:
        return examples
    first, rest = examples.label[0], examples.label[1:]
    if has_header is None:
        if task == "regression":
            likely = not parses_as(float, first) and all(parses_as(float, x) for x in rest)
        elif known is not None:
            likely = first not in known and first not in rest
        else:
            likely = _looks_like_header(examples.label)
        if not likely:
            return examples
        logging.warning(
            "%s: skipped line %d (label %r) as a header row; set config.data.has_header=False "
            "if it is an example.",
            examples.source,
            examples.line[0],
            first,
        )
    return _drop_first(examples)


def check_label_column(examples: RawExamples, task: str) -> None:
    """DataError when the label column holds text: more distinct labels than half the rows, or
    labels that read like sentences (usually the label and text columns are swapped)."""
    if task == "regression":
        return
    distinct = set(examples.label)
    sentence_like = [x for x in distinct if len(x.split()) >= 4 or len(x) > 60]
    many = len(examples) >= 20 and len(distinct) > len(examples) / 2
    if many or len(sentence_like) > len(distinct) / 2:
        example = max(distinct, key=len)
        raise DataError(
            f"{examples.source}: the label column (the first) holds {len(distinct)} distinct "
            f"values in {len(examples)} rows, e.g. {example[:60]!r}: the columns look swapped "
            "(each row must be label<TAB>text), or the task is not classification."
        )
