"""Request items as the task's own prediction input, so the task's reader and batcher build the
features `pretrain.predict` would.

An item is a text, or a pair (text_a, text_b) for classification and (question, context) for QA.
`write_inputs` writes a batch of items in the format `task.load_inputs` reads (one line per text,
`a<TAB>b` for pairs, SQuAD JSON for QA). Tabs and line breaks inside a text would break that
format; they are read as spaces (one for one, so tagging's character offsets stay right).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

Item = str | tuple[str, str]

# Which items each task takes: "texts", "pairs" or both.
ACCEPTS = {
    "classification": ("texts", "pairs"),
    "regression": ("texts", "pairs"),
    "tagging": ("texts",),
    "qa": ("pairs",),
    "retrieval": ("texts",),
}
_SEPARATORS = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


def _line(text: str) -> str:
    return text.translate(_SEPARATORS)


def write_inputs(task: str, items: Sequence[Item], path: str) -> None:
    """Writes `items` (all texts or all pairs) to `path` in the task's prediction input format."""
    if task == "qa":
        data = [
            {"paragraphs": [{"context": c, "qas": [{"id": str(i), "question": q}]}]}
            for i, (q, c) in enumerate(items)
        ]
        text = json.dumps({"version": "v2.0", "data": data}, ensure_ascii=False)
    else:
        lines = [_line(x) if isinstance(x, str) else f"{_line(x[0])}\t{_line(x[1])}" for x in items]
        text = "\n".join(lines) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def token_counts(task: str, tokenizer, items: Sequence[Item]) -> list[int] | None:
    """Tokens each item needs with [CLS] and [SEP]s, for the tasks that cut a long text (None for
    tagging and QA: their long inputs are split into windows, never cut)."""
    if task not in ("classification", "regression", "retrieval"):
        return None
    counts = []
    for x in items:
        parts = (x,) if isinstance(x, str) else x
        counts.append(sum(len(tokenizer.encode(_line(p))) for p in parts) + len(parts) + 1)
    return counts
