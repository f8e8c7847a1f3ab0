"""Entity-level metrics of tag sequences, as `seqeval` computes them (its default mode).

Entities are read from BIO tags (IOB2, and IOB1 alike): a chunk starts at `B-X`, or at `I-X`
after `O` or after a tag of another type (an `I-` without its `B-` still starts an entity), and
ends before `O`, `B-`, or a change of type. A tag without a `B-`/`I-` prefix (other than `O`)
reads as `I-` of its own type, so a run of it is one entity. A predicted entity counts when its
type, start and end all equal a gold entity's. Precision, recall and F1 are micro-averaged over all
entities, and reported per type too; token accuracy is over words.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

Entity = tuple[str, int, int]  # (type, first word, last word + 1)


def _split(tag: str) -> tuple[str, str]:
    """('B' | 'I' | 'O', type) of a tag; a tag without a B-/I- prefix reads as I-tag."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if sep and prefix in ("B", "I"):
        return prefix, kind
    return "I", tag


def entities(tags: Sequence[str]) -> list[Entity]:
    """The entities of one sentence's tags (see the module docstring)."""
    out: list[Entity] = []
    start, kind = None, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, this_kind = _split(tag)
        if prefix == "I" and start is not None and this_kind == kind:
            continue  # The current entity goes on.
        if start is not None:
            out.append((kind, start, i))
            start, kind = None, ""
        if prefix != "O":
            start, kind = i, this_kind
    return out


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": gold}


def entity_scores(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, dict[str, float]]:
    """{'all': P/R/F1/support, TYPE: P/R/F1/support, ...} over all sentences."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError("a sentence's gold and predicted tags differ in length.")
        g, p = set(entities(gold_tags)), set(entities(predicted_tags))
        for name, group in (("gold", g), ("predicted", p), ("correct", g & p)):
            for kind, _, _ in group:
                counts[kind][name] += 1
                counts["all"][name] += 1
    scores = {"all": _prf(0, 0, 0)}
    for kind, c in counts.items():
        scores[kind] = _prf(c["correct"], c["predicted"], c["gold"])
    return scores


def token_accuracy(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
    return sum(g == p for g, p in pairs) / max(len(pairs), 1)


def tagging_metrics(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, float]:
    """The eval row's metrics: entity P/R/F1 (micro), F1 per type, token accuracy."""
    scores = entity_scores(gold, predicted)
    row = {
        "entity_f1": scores["all"]["f1"],
        "entity_precision": scores["all"]["precision"],
        "entity_recall": scores["all"]["recall"],
        "token_accuracy": token_accuracy(gold, predicted),
    }
    for kind in sorted(k for k in scores if k != "all"):
        row[f"entity_f1_{kind}"] = scores[kind]["f1"]
    return row
