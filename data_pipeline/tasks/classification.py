"""Sequence classification data: label, tokenize, truncate, and batch by step.

Examples come from `data.train_file` and `data.eval_file` (TSV or TFDS, read and checked by
`data_pipeline/tasks/examples.py`). Labels are strings. The label set (and so the class ids)
comes from the training data: the `ClassLabel` names of a TFDS source, or the sorted distinct
labels of a TSV (numerically when all are integers), unless given explicitly; the caller saves it
with the run. A label of the eval set that the training data lacks is an error naming the file
and line.

Sequences are `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, cut to `max_seq_length` the BERT way
(tokens come off the end of the longer segment). Features (B rows, S = max_seq_length):

    input_ids [B, S] int32, input_mask [B, S] int32, segment_ids [B, S] int32,
    label [B] int32 (float32 for regression), example_weight [B] float32

Train batch `step` is a pure function of (seed, step), ordered by `data_pipeline/order.py` as
pretraining's is. Eval batches cover the eval set in order; the last one is padded with all-zero
rows of weight 0.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from data_pipeline.errors import ConfigError, DataError, MissingInputError
from data_pipeline.order import PaddedEvalBatches, ShuffledBatches, TokenBatcher
from data_pipeline.tasks.examples import (
    RawExamples,
    check_label_column,
    parses_as,
    read_examples,
    skip_header,
)

TASKS = ("classification", "regression")
_ENCODE_CHUNK = 10_000  # Texts tokenized per call: bounds peak memory on large sources.


def label_vocabulary(examples: RawExamples, task: str) -> list[str]:
    """Class names in id order: the source's declared names, else the sorted distinct labels.

    Integer labels sort numerically ('2' before '10'). A regression task has no classes: [].
    """
    if task == "regression":
        return []
    if examples.label_names is not None:
        return list(examples.label_names)
    distinct = set(examples.label)
    if all(parses_as(int, x) for x in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def encode_labels(
    examples: RawExamples, labels: Sequence[str], task: str, train_source: str
) -> np.ndarray:
    """int32 class ids [N] (float32 scores for regression); DataError names a bad line."""
    if task == "regression":
        scores = np.empty(len(examples), np.float32)
        for i, text in enumerate(examples.label):
            try:
                scores[i] = float(text)
            except ValueError:
                raise DataError(
                    f"{examples.where(i)}: label {text!r} is not a number, but "
                    "config.task='regression' needs numeric labels."
                ) from None
        return scores
    ids = {name: i for i, name in enumerate(labels)}
    out = np.empty(len(examples), np.int32)
    for i, text in enumerate(examples.label):
        if text not in ids:
            shown = ", ".join(repr(x) for x in labels[:10]) + (", ..." if len(labels) > 10 else "")
            raise DataError(
                f"{examples.where(i)}: label {text!r} does not occur in the training data "
                f"{train_source} (labels: {shown}); fix the label or add examples of it."
            )
        out[i] = ids[text]
    return out


def truncated_pair_lengths(
    len_a: npt.ArrayLike, len_b: npt.ArrayLike, max_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lengths kept by BERT's pair truncation, vectorized.

    BERT removes one token at a time from the end of the longer segment (of b on a tie) until
    the pair fits `max_tokens`: the shorter one survives whole if it fits in half the budget;
    otherwise a keeps ceil(max_tokens / 2) and b the rest.
    """
    len_a, len_b = np.asarray(len_a, np.int64), np.asarray(len_b, np.int64)
    keep_a = np.minimum(len_a, np.maximum(max_tokens - len_b, (max_tokens + 1) // 2))
    keep_b = np.minimum(len_b, max_tokens - keep_a)
    return keep_a, keep_b


@dataclasses.dataclass(frozen=True)
class TokenizedExamples:
    """Truncated token ids of every example as ragged arrays, and their labels."""

    tokens_a: np.ndarray  # int32 [sum of kept a lengths]
    offsets_a: np.ndarray  # int64 [N + 1]
    tokens_b: np.ndarray | None  # int32 [sum of kept b lengths]; None for single sentences.
    offsets_b: np.ndarray | None
    labels: np.ndarray  # int32 [N] class ids, or float32 [N] regression scores.

    def __len__(self) -> int:
        return len(self.labels)

    def segments(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        a = self.tokens_a[self.offsets_a[i] : self.offsets_a[i + 1]]
        if self.tokens_b is None:
            return a, None
        return a, self.tokens_b[self.offsets_b[i] : self.offsets_b[i + 1]]


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), _ENCODE_CHUNK):
        ids.extend(tokenizer.encode_batch(texts[start : start + _ENCODE_CHUNK]))
    return ids


def _ragged(ids: list[list[int]], keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(keep, out=offsets[1:])
    flat = np.empty(offsets[-1], np.int32)
    for i, (x, n) in enumerate(zip(ids, keep)):
        flat[offsets[i] : offsets[i + 1]] = x[:n]
    return flat, offsets


def tokenize(
    examples: RawExamples, labels: np.ndarray, tokenizer, max_seq_length: int
) -> TokenizedExamples:
    """Tokenizes and truncates so that [CLS] a [SEP] (b [SEP]) fits `max_seq_length`."""
    ids_a = _encode(tokenizer, examples.text_a)
    len_a = np.array([len(x) for x in ids_a], np.int64)
    if examples.text_b is None:
        if max_seq_length < 3:
            raise ConfigError(f"data.max_seq_length={max_seq_length} is too short: use >= 3.")
        tokens_a, offsets_a = _ragged(ids_a, np.minimum(len_a, max_seq_length - 2))
        return TokenizedExamples(tokens_a, offsets_a, None, None, labels)
    if max_seq_length < 5:
        raise ConfigError(f"data.max_seq_length={max_seq_length} is too short for pairs: use >= 5.")
    ids_b = _encode(tokenizer, examples.text_b)
    len_b = np.array([len(x) for x in ids_b], np.int64)
    keep_a, keep_b = truncated_pair_lengths(len_a, len_b, max_seq_length - 3)
    tokens_a, offsets_a = _ragged(ids_a, keep_a)
    tokens_b, offsets_b = _ragged(ids_b, keep_b)
    return TokenizedExamples(tokens_a, offsets_a, tokens_b, offsets_b, labels)


class _Batcher(TokenBatcher):
    """Packs examples into zero-padded feature arrays (see the module docstring)."""

    def __init__(self, data: TokenizedExamples, **kwargs: Any):
        super().__init__(len(data), **kwargs)
        self.data = data

    def _features(self, examples: np.ndarray, epochs: np.ndarray, valid: np.ndarray) -> dict:
        del epochs  # Fine-tuning features are the same every epoch.
        b, s = len(examples), self.max_seq_length
        batch = {
            **self._inputs(b, s),
            "label": np.zeros((b,), self.data.labels.dtype),
            "example_weight": valid.astype(np.float32),
        }
        for r in np.flatnonzero(valid):
            example = int(examples[r])
            a, second = self.data.segments(example)
            ids = [self.cls_id, *a, self.sep_id]
            len_first = len(ids)
            if second is not None:
                ids += [*second, self.sep_id]
            n = len(ids)
            batch["input_ids"][r, :n] = ids
            batch["input_mask"][r, :n] = 1
            batch["segment_ids"][r, len_first:n] = 1
            batch["label"][r] = self.data.labels[example]
        return batch


class TrainBatches(ShuffledBatches, _Batcher):
    """Global train batch `step` (or this process's rows of it), reshuffled every epoch."""


class EvalBatches(PaddedEvalBatches, _Batcher):
    """The eval set in order; the last batch is padded with zero rows of weight 0."""


@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """Everything the fine-tuning loop needs from the data side."""

    train: TrainBatches
    eval: EvalBatches | None
    labels: list[str]  # Class names by id; [] for regression.
    eval_examples: RawExamples | None  # Raw eval rows, for predictions.tsv.


def build_datasets(
    data_config,
    tokenizer,
    *,
    task: str,
    seed: int,
    global_batch_size: int,
    eval_batch_size: int,
    labels: Sequence[str] | None = None,
) -> ClassificationData:
    """Reads, labels and tokenizes `data.train_file` and `data.eval_file` (which may be empty).

    Args:
      data_config: `config.data` (train_file, eval_file, max_seq_length, text_a_key, text_b_key,
        label_key, labels).
      tokenizer: a `data_pipeline.vocab.Tokenizer`.
      task: 'classification' or 'regression'.
      seed: shuffles the training examples (per epoch).
      labels: class names by id, as saved by an earlier start of the same run; None: from
        `data.labels` when set, else from the training data.
    """
    if task not in TASKS:
        raise ConfigError(f"config.task={task!r} is not supported: use one of {', '.join(TASKS)}.")
    if not data_config.train_file.strip():
        raise ConfigError(
            "config.data.train_file is empty: set it to a TSV file (label<TAB>text) or tfds:NAME."
        )
    has_header = data_config.get("has_header")
    train_raw = skip_header(
        read_examples(data_config.train_file.strip(), data_config), task, has_header
    )
    if labels is None:
        check_label_column(train_raw, task)
        given = [x.strip() for x in data_config.labels.split(",") if x.strip()]
        labels = given if given and task == "classification" else label_vocabulary(train_raw, task)
    labels = list(labels)
    if task == "classification" and len(labels) < 2:
        raise DataError(
            f"{train_raw.source} has {len(labels)} distinct label(s) {labels}: classification "
            "needs at least 2 (or set config.task='regression' for numeric scores)."
        )
    if len(set(labels)) != len(labels):
        raise ConfigError(f"config.data.labels lists a label twice: {labels}.")
    batch_args = dict(
        max_seq_length=data_config.max_seq_length,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
    )
    train_ids = encode_labels(train_raw, labels, task, train_raw.source)
    train = TrainBatches(
        tokenize(train_raw, train_ids, tokenizer, data_config.max_seq_length),
        seed=seed,
        batch_size=global_batch_size,
        **batch_args,
    )
    eval_spec = data_config.eval_file.strip()
    if not eval_spec:
        return ClassificationData(train, None, labels, None)
    eval_raw = skip_header(read_examples(eval_spec, data_config), task, has_header, labels)
    if (eval_raw.text_b is None) != (train_raw.text_b is None):
        raise DataError(
            f"{eval_raw.source} and {train_raw.source} disagree on sentence pairs: one has a "
            "text_b column and the other not; give both files the same layout."
        )
    evals = eval_batches(eval_raw, labels, task, tokenizer, data_config, eval_batch_size,
                         train_raw.source)  # fmt: skip
    return ClassificationData(train, evals, labels, eval_raw)


def eval_batches(raw: RawExamples, labels: Sequence[str], task: str, tokenizer, data_config,
                 batch_size: int, train_source: str) -> EvalBatches:  # fmt: skip
    """Eval batches of labelled examples (`raw.label` None-free) or, for prediction, of
    examples whose labels are unknown (`read_inputs`: all encoded as 0)."""
    if raw.label and raw.label[0] is None:
        dtype = np.float32 if task == "regression" else np.int32
        ids = np.zeros(len(raw), dtype)
    else:
        ids = encode_labels(raw, labels, task, train_source)
    return EvalBatches(
        tokenize(raw, ids, tokenizer, data_config.max_seq_length),
        batch_size=batch_size,
        max_seq_length=data_config.max_seq_length,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
    )


def read_inputs(path: str) -> RawExamples:
    """Unlabelled input: one `text` or `text_a<TAB>text_b` per line (every line alike)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"input file {path!r} not found.")
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\r\n").split("\t") for line in f]
    if not rows:
        raise DataError(f"{path} is empty: give one text (or text_a<TAB>text_b) per line.")
    columns = {len(r) for r in rows}
    if len(columns) != 1 or columns.pop() not in (1, 2):
        raise DataError(
            f"{path}: every line must be `text` or `text_a<TAB>text_b`, the same in all lines."
        )
    pairs = len(rows[0]) == 2
    return RawExamples(
        path, [r[0] for r in rows], [r[1] for r in rows] if pairs else None,
        [None] * len(rows), list(range(1, len(rows) + 1)),
    )  # fmt: skip
