"""SQuAD answers from start/end logits, and the official exact-match and F1 scores.

Decoding follows BERT's run_squad: for each question, over all its windows, the `n_best` highest
start and end logits form candidate spans that lie in the context, end at or after their start,
are at most `max_answer_length` tokens long, and start at a token this window gives the most
context; the best candidate maximizes start + end logit. The null answer's score is the lowest
[CLS] start + end over the windows; it wins (answer '') when it beats the best span by more than
`null_threshold`, and only when unanswerable questions are allowed (SQuAD v2.0).

Scores use the official evaluation script's normalization (lower case, no punctuation, no
articles a/an/the, single spaces); EM and F1 take the best over the gold answers, and an
unanswerable question is right only when the prediction is ''.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not truth:
        return float(predicted == truth)
    common = collections.Counter(predicted) & collections.Counter(truth)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 (in [0, 1]); a question without gold answers expects ''."""
    em, f = [], []
    for prediction, gold in zip(predictions, golds, strict=True):
        gold = list(gold) or [""]
        em.append(max(exact_match(prediction, g) for g in gold))
        f.append(max(f1(prediction, g) for g in gold))
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f))}


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    start: int  # Character offsets in the context ('' answers: -1).
    end: int
    score: float  # start + end logit (the null score for '').


def decode(
    windows,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    contexts: Sequence[str],
    *,
    max_answer_length: int,
    allow_null: bool,
    null_threshold: float = 0.0,
    n_best: int = 20,
) -> list[Answer]:
    """The answer of every question from its windows' logits [W, S] (see the docstring)."""
    best: dict[int, Answer] = {}
    null: dict[int, float] = {}
    for k in range(len(windows)):
        e = int(windows.example[k])
        starts, ends = start_logits[k], end_logits[k]
        null[e] = min(null.get(e, np.inf), float(starts[0] + ends[0]))
        spans = windows.char_spans[k]
        top_starts = np.argsort(-starts)[:n_best]
        top_ends = np.argsort(-ends)[:n_best]
        for i in top_starts:
            if spans[i, 0] < 0 or not windows.max_context[k, i]:
                continue
            for j in top_ends:
                if spans[j, 0] < 0 or j < i or j - i + 1 > max_answer_length:
                    continue
                score = float(starts[i] + ends[j])
                if e not in best or score > best[e].score:
                    a, b = int(spans[i, 0]), int(spans[j, 1])
                    best[e] = Answer(contexts[e][a:b], a, b, score)
    out = []
    for e in range(len(contexts)):
        candidate = best.get(e)
        if candidate is None or (allow_null and null[e] - candidate.score > null_threshold):
            out.append(Answer("", -1, -1, null.get(e, 0.0)))
        else:
            out.append(candidate)
    return out
