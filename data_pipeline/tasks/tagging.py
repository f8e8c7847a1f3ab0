"""Token classification data: words to pieces, sentences to windows, windows to batches by step.

Sentences come from `data_pipeline/tasks/conll.py`. Labels are strings (BIO / IOB2 tags or any
other per-word label); the label set is the source's declared names, else the distinct labels of
the training data, sorted with 'O' first; the caller saves it with the run. A word's label is
trained and predicted at its first piece; its other pieces weigh 0.

A sentence whose pieces do not fit `max_seq_length - 2` is split into windows at word
boundaries, each starting `stride` pieces (default: half a window) after the previous one, so
nothing is cut off. Each word is scored in the one window where it has the most context on both
sides (as BERT's SQuAD windows do); its other windows give it weight 0. A single word longer than
a window keeps only the pieces that fit (its first piece is all the label needs).

Features (B rows, S = max_seq_length):

    input_ids, input_mask, segment_ids [B, S] int32; labels [B, S] int32 (label id at scored
    positions, 0 elsewhere); label_weights [B, S] float32 (1 at scored positions);
    example_weight [B] float32 (0 for eval padding rows)

Train batch `step` is a pure function of (seed, step) over windows (`data_pipeline/order.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipeline.errors import ConfigError, DataError
from data_pipeline.order import PaddedEvalBatches, ShuffledBatches, TokenBatcher
from data_pipeline.tasks.conll import Sentences

OUTSIDE = "O"


def label_vocabulary(sentences: Sentences) -> list[str]:
    """Label names in id order: the source's declared names, else sorted with 'O' first."""
    if sentences.label_names is not None:
        return list(sentences.label_names)
    distinct = {label for labels in sentences.labels for label in labels}
    return sorted(distinct, key=lambda x: (x != OUTSIDE, x))


def encode_labels(sentences: Sentences, labels: list[str], train_source: str) -> list[np.ndarray]:
    """Label ids per sentence; DataError names the line of a label the training data lacks."""
    ids = {name: i for i, name in enumerate(labels)}
    out = []
    for i, tags in enumerate(sentences.labels):
        for j, tag in enumerate(tags):
            if tag not in ids:
                raise DataError(
                    f"{sentences.where(i, j)}: label {tag!r} does not occur in the training "
                    f"data {train_source} (labels: {', '.join(labels[:12])}); fix the label or "
                    "add examples of it."
                )
        out.append(np.array([ids[t] for t in tags], np.int32))
    return out


@dataclasses.dataclass(frozen=True)
class Windows:
    """Every window of every sentence, as ragged arrays over their pieces."""

    sentence: np.ndarray  # int64 [W]: the sentence of each window.
    offsets: np.ndarray  # int64 [W + 1]: window w holds pieces offsets[w]:offsets[w + 1].
    ids: np.ndarray  # int32 [pieces]
    word: np.ndarray  # int32 [pieces]: the word (index in its sentence) of each piece.
    scored: np.ndarray  # bool [pieces]: the first piece of a word this window scores.
    labels: np.ndarray  # int32 [pieces]: the word's label id at scored pieces, else 0.

    def __len__(self) -> int:
        return len(self.sentence)


def _spans(lengths: list[int], max_pieces: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of one sentence's windows (see the module docstring)."""
    starts = np.concatenate([[0], np.cumsum(lengths)])
    spans, start = [], 0
    while True:
        end = start + 1  # Always at least one word (cut to max_pieces if it is longer).
        while end < len(lengths) and starts[end + 1] - starts[start] <= max_pieces:
            end += 1
        spans.append((start, end))
        if end >= len(lengths):
            return spans
        target = starts[start] + stride
        start = int(min(max(np.searchsorted(starts, target), start + 1), end))


def make_windows(
    pieces: list[list[list[int]]],
    labels: list[np.ndarray] | None,
    max_pieces: int,
    stride: int,
    unk_id: int,
) -> Windows:
    """Windows of every sentence; `pieces[s][w]` are the ids of word w of sentence s."""
    sentence, sizes, ids, words, scored, tags = [], [], [], [], [], []
    for s, sentence_pieces in enumerate(pieces):
        lengths = [max(len(p), 1) for p in sentence_pieces]
        spans = _spans(lengths, max_pieces, stride) if lengths else [(0, 0)]
        owner = _owners(lengths, spans)
        for k, (start, end) in enumerate(spans):
            window_ids, window_words, window_scored = [], [], []
            for w in range(start, end):
                word_ids = list(sentence_pieces[w]) or [unk_id]
                window_ids += word_ids
                window_words += [w] * len(word_ids)
                window_scored += [owner[w] == k] + [False] * (len(word_ids) - 1)
            window_ids = window_ids[:max_pieces]  # Only a lone over-long word is ever cut.
            n = len(window_ids)
            sentence.append(s)
            sizes.append(n)
            ids += window_ids
            words += window_words[:n]
            scored += window_scored[:n]
            word_labels = labels[s] if labels is not None else np.zeros(len(lengths), np.int32)
            tags += [int(word_labels[w]) if on else 0
                     for w, on in zip(window_words[:n], window_scored[:n])]  # fmt: skip
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return Windows(
        np.array(sentence, np.int64), offsets, np.array(ids, np.int32),
        np.array(words, np.int32), np.array(scored, bool), np.array(tags, np.int32),
    )  # fmt: skip


def _owners(lengths: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """For each word, the window where its first piece has the most context on both sides."""
    starts = np.concatenate([[0], np.cumsum(lengths)])
    owner, best = [0] * len(lengths), [-1.0] * len(lengths)
    for k, (start, end) in enumerate(spans):
        for w in range(start, end):
            before = starts[w] - starts[start]
            after = starts[end] - starts[w] - 1
            context = min(before, after) + 0.01 * (starts[end] - starts[start])
            if context > best[w]:
                owner[w], best[w] = k, context
    return owner


def tokenize(sentences: Sentences, tokenizer) -> list[list[list[int]]]:
    """Piece ids of every word of every sentence (one batched tokenizer call)."""
    flat = [word for words in sentences.words for word in words]
    encoded = tokenizer.encode_batch(flat) if flat else []
    out, i = [], 0
    for words in sentences.words:
        out.append(encoded[i : i + len(words)])
        i += len(words)
    return out


class _Batcher(TokenBatcher):
    """Packs windows into zero-padded feature arrays (see the module docstring)."""

    def __init__(self, windows: Windows, **kwargs: Any):
        super().__init__(len(windows), what="sentences", **kwargs)
        self.windows = windows

    def _features(self, examples: np.ndarray, epochs: np.ndarray, valid: np.ndarray) -> dict:
        del epochs  # Fine-tuning features are the same every epoch.
        b, s = len(examples), self.max_seq_length
        batch = {
            **self._inputs(b, s),
            "labels": np.zeros((b, s), np.int32),
            "label_weights": np.zeros((b, s), np.float32),
            "example_weight": valid.astype(np.float32),
        }
        w = self.windows
        for r in np.flatnonzero(valid):
            a, z = w.offsets[examples[r]], w.offsets[examples[r] + 1]
            n = int(z - a)
            batch["input_ids"][r, : n + 2] = [self.cls_id, *w.ids[a:z], self.sep_id]
            batch["input_mask"][r, : n + 2] = 1
            batch["labels"][r, 1 : n + 1] = w.labels[a:z]
            batch["label_weights"][r, 1 : n + 1] = w.scored[a:z]
        return batch


class TrainBatches(ShuffledBatches, _Batcher):
    """Global train batch `step` (or this process's rows of it), reshuffled every epoch."""


class EvalBatches(PaddedEvalBatches, _Batcher):
    """Every window in order; the last batch is padded with zero rows of weight 0."""

    def word_predictions(self, predicted: np.ndarray, sentences: Sentences) -> list[np.ndarray]:
        """Per sentence, the predicted id of each word, from `predicted` [W, S] (per window and
        position, as the eval pass returns them)."""
        out = [np.zeros(len(words), np.int32) for words in sentences.words]
        w = self.windows
        for k in range(len(w)):
            a, z = w.offsets[k], w.offsets[k + 1]
            on = w.scored[a:z]
            out[w.sentence[k]][w.word[a:z][on]] = predicted[k, 1 : z - a + 1][on]
        return out


def window_args(data_config, tokenizer) -> tuple[int, int, dict]:
    """(max pieces per window, stride, batcher keyword arguments) of `config.data`."""
    max_pieces = data_config.max_seq_length - 2
    if max_pieces < 1:
        raise ConfigError(f"data.max_seq_length={data_config.max_seq_length} is too short.")
    stride = data_config.get("stride", 0) or max(max_pieces // 2, 1)
    if not 1 <= stride <= max_pieces:
        raise ConfigError(f"data.stride={stride} must be in [1, max_seq_length - 2].")
    batch_args = dict(max_seq_length=data_config.max_seq_length, cls_id=tokenizer.cls_id,
                      sep_id=tokenizer.sep_id)  # fmt: skip
    return max_pieces, stride, batch_args


def eval_batches(sentences: Sentences, labels: list[str] | None, train_source: str,
                 data_config, tokenizer, batch_size: int) -> EvalBatches:  # fmt: skip
    """Eval (or prediction, `labels` None) windows of `sentences`."""
    max_pieces, stride, batch_args = window_args(data_config, tokenizer)
    ids = encode_labels(sentences, labels, train_source) if labels is not None else None
    windows = make_windows(tokenize(sentences, tokenizer), ids, max_pieces, stride,
                           tokenizer.unk_id)  # fmt: skip
    return EvalBatches(windows, batch_size=batch_size, **batch_args)


def train_batches(sentences: Sentences, labels: list[str], data_config, tokenizer, *, seed: int,
                  batch_size: int) -> TrainBatches:  # fmt: skip
    max_pieces, stride, batch_args = window_args(data_config, tokenizer)
    ids = encode_labels(sentences, labels, sentences.source)
    windows = make_windows(tokenize(sentences, tokenizer), ids, max_pieces, stride,
                           tokenizer.unk_id)  # fmt: skip
    return TrainBatches(windows, seed=seed, batch_size=batch_size, **batch_args)
