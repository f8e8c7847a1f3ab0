"""What `pretrain.evaluate` writes beside its JSON line: markdown tables and the confusion matrix.

Each fine-tuning task's `report` builds its per-class rows with these (precision, recall, F1 and
support per class or entity type); classification also draws its confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x: object) -> str:
        return f"{x:.4f}" if isinstance(x, float) else str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metrics_section(title: str, row: dict[str, float]) -> str:
    return f"# {title}\n\n" + markdown_table(["metric", "value"], sorted(row.items())) + "\n"


def per_class_rows(cm: np.ndarray, names: Sequence[str]) -> list[list[object]]:
    """[name, precision, recall, F1, support] per class of a confusion matrix (rows: gold)."""
    tp = np.diag(cm).astype(float)
    predicted, gold = cm.sum(axis=0).astype(float), cm.sum(axis=1).astype(float)
    rows = []
    for i, name in enumerate(names):
        p = tp[i] / predicted[i] if predicted[i] else 0.0
        r = tp[i] / gold[i] if gold[i] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        rows.append([name, p, r, f, int(gold[i])])
    return rows


def plot_confusion_matrix(cm: np.ndarray, names: Sequence[str], path: str) -> None:
    """A PNG of the confusion matrix, rows normalized to the gold count, with the counts."""
    import matplotlib  # Deferred: only evaluation draws.

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = max(4.0, 0.45 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color=color)  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the gold class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
