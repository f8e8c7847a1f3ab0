"""Extractive QA data: SQuAD JSON or TFDS, question + context windows, batches by step.

Reading: SQuAD v1.1 / v2.0 JSON (`data[].paragraphs[].{context, qas[]}`, each question with
`id`, `question`, `answers[{text, answer_start}]` and, in v2.0, `is_impossible`), or
`tfds:squad[:SPLIT]`. An answer whose text is not the context at its offset is a DataError naming
the question id (the offsets are what training learns from). Unlabelled input for prediction is
the same JSON without answers.

Features: the context is tokenized once with character offsets (`encode_with_offsets`), the
question cut to `max_query_length` tokens; each window is `[CLS] question [SEP] context piece
[SEP]` with the context pieces starting every `doc_stride` tokens (as BERT's run_squad). The
answer's first and last tokens are the targets where the window holds the whole answer, [CLS]
(position 0) otherwise and for unanswerable questions.

    input_ids, input_mask, segment_ids [B, S] int32; start_positions, end_positions [B] int32;
    example_weight [B] float32

Per window, `Windows` keeps what decoding needs: the example, the first context position, the
character span of every context token and whether this window gives it the most context.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from data_pipeline import tfds_source
from data_pipeline.errors import ConfigError, DataError, MissingInputError
from data_pipeline.order import Batcher, PaddedEvalBatches, ShuffledBatches


@dataclasses.dataclass(frozen=True)
class Question:
    """One question about one context, with its gold answers (empty: unanswerable/unknown)."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, character offset in the context)
    is_impossible: bool = False


def _check(q: Question, where: str) -> Question:
    for text, start in q.answers:
        if q.context[start : start + len(text)] != text:
            found = q.context[start : start + len(text)]
            raise DataError(
                f"{where}: question {q.id!r}: answer {text!r} is not the context at its "
                f"answer_start {start} (the context there reads {found!r}); fix the offset."
            )
    return q


def read_json(path: str, labelled: bool = True) -> list[Question]:
    """Questions of a SQuAD JSON file (`labelled=False`: answers not needed)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"SQuAD file {path!r} not found: check the path.")
    try:
        with open(path, encoding="utf-8") as f:
            articles = json.load(f)["data"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not SQuAD JSON ({type(e).__name__}: {e}).") from None
    out = []
    for article in articles:
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                impossible = bool(qa.get("is_impossible", False))
                answers = () if impossible else tuple(
                    (a["text"], int(a["answer_start"])) for a in qa.get("answers", [])
                )  # fmt: skip
                if labelled and not answers and not impossible:
                    raise DataError(
                        f"{path}: question {qa.get('id')!r} has no answers and is not "
                        "is_impossible: give its answers (or mark it impossible, SQuAD v2.0)."
                    )
                q = Question(str(qa["id"]), qa["question"], context, answers, impossible)
                out.append(_check(q, path))
    if not out:
        raise DataError(f"{path} holds no questions.")
    return out


def _text(value) -> str:
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tfds(spec: str) -> list[Question]:
    """Questions of a TFDS SQuAD split (`id`, `question`, `context`, `answers`)."""
    source = tfds_source.open_split(spec)
    out = []
    for i in range(len(source)):
        r = source[i]
        texts = [_text(t) for t in r["answers"]["text"]]
        starts = [int(s) for s in r["answers"]["answer_start"]]
        impossible = bool(r.get("is_impossible", False)) or not texts
        q = Question(_text(r["id"]), _text(r["question"]), _text(r["context"]),
                     tuple(zip(texts, starts)), impossible)  # fmt: skip
        out.append(_check(q, f"{spec}, record {i}"))
    if not out:
        raise DataError(f"{spec} holds no questions.")
    return out


def read_questions(spec: str, labelled: bool = True) -> list[Question]:
    if tfds_source.is_tfds_spec(spec):
        return read_tfds(spec)
    return read_json(spec, labelled)


@dataclasses.dataclass(frozen=True)
class Windows:
    """Every window of every question (see the module docstring)."""

    example: np.ndarray  # int64 [W]
    input_ids: np.ndarray  # int32 [W, S]
    segment_ids: np.ndarray  # int32 [W, S]
    lengths: np.ndarray  # int32 [W]: real tokens.
    context_start: np.ndarray  # int32 [W]: position of the first context token.
    char_spans: np.ndarray  # int32 [W, S, 2]: context characters of each position (-1: none).
    max_context: np.ndarray  # bool [W, S]: this window gives the token the most context.
    start_positions: np.ndarray  # int32 [W]
    end_positions: np.ndarray  # int32 [W]

    def __len__(self) -> int:
        return len(self.example)


def _answer_tokens(q: Question, spans: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(first, last) context token of the first gold answer, or None."""
    if q.is_impossible or not q.answers:
        return None
    text, start = q.answers[0]
    end = start + len(text)
    inside = [i for i, (a, b) in enumerate(spans) if b > start and a < end and b > a]
    return (inside[0], inside[-1]) if inside else None


def make_windows(questions: list[Question], tokenizer, data_config) -> Windows:
    """Tokenizes every question and context into windows of `data.max_seq_length`."""
    c = data_config
    s, stride = c.max_seq_length, c.doc_stride
    rows: dict[str, list] = {k: [] for k in Windows.__dataclass_fields__}
    for e, q in enumerate(questions):
        q_ids = tokenizer.encode(q.question)[: c.max_query_length]
        ids, spans = tokenizer.encode_with_offsets(q.context)
        room = s - len(q_ids) - 3
        if room < 1:
            raise ConfigError(
                f"data.max_seq_length={s} leaves no room for the context after a question of "
                f"{len(q_ids)} tokens (data.max_query_length={c.max_query_length}): raise it."
            )
        answer = _answer_tokens(q, spans)
        starts = [0]  # BERT's: windows `stride` apart until one reaches the context's end.
        while starts[-1] + room < len(ids):
            starts.append(starts[-1] + min(room, stride))
        for first in starts:
            _add_window(rows, e, q_ids, ids, spans, first, room, answer, starts, s, tokenizer)
    arrays = {k: np.asarray(v) for k, v in rows.items()}
    return Windows(**arrays)


def _add_window(rows, e, q_ids, ids, spans, first, room, answer, starts, s, tokenizer) -> None:
    last = min(first + room, len(ids))  # Context tokens [first, last).
    offset = len(q_ids) + 2  # [CLS] question [SEP]
    tokens = [tokenizer.cls_id, *q_ids, tokenizer.sep_id, *ids[first:last], tokenizer.sep_id]
    n = len(tokens)
    input_ids = np.zeros(s, np.int32)
    input_ids[:n] = tokens
    segments = np.zeros(s, np.int32)
    segments[offset:n] = 1
    char_spans = np.full((s, 2), -1, np.int32)
    char_spans[offset : offset + last - first] = spans[first:last]
    best = np.zeros(s, bool)
    for t in range(first, last):  # BERT's _check_is_max_context over the question's windows.
        scores = [min(t - a, min(a + room, len(ids)) - 1 - t) + 0.01 * (min(a + room, len(ids)) - a)
                  for a in starts if a <= t < a + room]  # fmt: skip
        own = min(t - first, last - 1 - t) + 0.01 * (last - first)
        best[offset + t - first] = own >= max(scores)
    start = end = 0
    if answer is not None and first <= answer[0] and answer[1] < last:
        start, end = offset + answer[0] - first, offset + answer[1] - first
    for key, value in (("example", e), ("input_ids", input_ids), ("segment_ids", segments),
                       ("lengths", n), ("context_start", offset), ("char_spans", char_spans),
                       ("max_context", best), ("start_positions", start),
                       ("end_positions", end)):  # fmt: skip
        rows[key].append(value)


class _Batcher(Batcher):
    """Question + context windows into feature arrays (see the module docstring)."""

    def __init__(self, windows: Windows, *, batch_size: int):
        super().__init__(len(windows), batch_size, what="questions")
        self.windows = windows

    def _features(self, examples: np.ndarray, epochs: np.ndarray, valid: np.ndarray) -> dict:
        del epochs  # Fine-tuning features are the same every epoch.
        w = self.windows
        lengths = np.where(valid, w.lengths[examples], 0)
        s = w.input_ids.shape[1]
        mask = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
        return {
            "input_ids": w.input_ids[examples] * mask,
            "input_mask": mask,
            "segment_ids": w.segment_ids[examples] * mask,
            "start_positions": np.where(valid, w.start_positions[examples], 0).astype(np.int32),
            "end_positions": np.where(valid, w.end_positions[examples], 0).astype(np.int32),
            "example_weight": valid.astype(np.float32),
        }


class TrainBatches(ShuffledBatches, _Batcher):
    """Global train batch `step` (or some of its rows), windows reshuffled every epoch."""


class EvalBatches(PaddedEvalBatches, _Batcher):
    """Every window in order; the last batch is padded with zero rows of weight 0."""


def check_config(data_config) -> None:
    c = data_config
    if c.doc_stride < 1 or c.max_query_length < 1 or c.max_answer_length < 1:
        raise ConfigError(
            "data.doc_stride, data.max_query_length and data.max_answer_length must be >= 1."
        )
    if c.max_seq_length - c.max_query_length - 3 < 1:
        raise ConfigError(
            f"data.max_seq_length={c.max_seq_length} leaves no room for context after "
            f"data.max_query_length={c.max_query_length}: raise max_seq_length."
        )
    if c.doc_stride > c.max_seq_length - c.max_query_length - 3:
        raise ConfigError(
            f"data.doc_stride={c.doc_stride} is longer than a window's context "
            f"({c.max_seq_length - c.max_query_length - 3} tokens): windows would skip text."
        )
