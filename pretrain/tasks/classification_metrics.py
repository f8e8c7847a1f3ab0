"""Eval metrics of fine-tuning, computed in numpy on the whole eval set at once.

F1 and correlations do not decompose into per-batch sums, so the loop gathers every prediction
first (padding rows removed) and calls these once. Conventions follow scikit-learn and scipy:
macro-F1 averages over the classes that occur in the labels or the predictions; an undefined
F1, MCC or correlation (a zero denominator) is 0.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def confusion_matrix(labels: npt.ArrayLike, predictions: npt.ArrayLike, num_classes: int):
    """int64 [C, C]: entry [i, j] counts examples of class i predicted as class j."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def _f1_per_class(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    denominator = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def accuracy(labels: npt.ArrayLike, predictions: npt.ArrayLike) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float(np.mean(labels == predictions)) if labels.size else 0.0


def macro_f1(labels: npt.ArrayLike, predictions: npt.ArrayLike, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    cm = confusion_matrix(labels, predictions, num_classes)
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(_f1_per_class(cm)[present].mean()) if present.any() else 0.0


def binary_f1(labels: npt.ArrayLike, predictions: npt.ArrayLike, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's F1 for MRPC and QQP)."""
    return float(_f1_per_class(confusion_matrix(labels, predictions, 2))[positive])


def matthews_corrcoef(labels: npt.ArrayLike, predictions: npt.ArrayLike, num_classes: int) -> float:
    """Matthews correlation (Gorodkin's multiclass form; for 2 classes the usual phi)."""
    cm = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
    n, correct = cm.sum(), np.trace(cm)
    true_per_class, predicted_per_class = cm.sum(1), cm.sum(0)
    covariance = correct * n - predicted_per_class @ true_per_class
    scale = np.sqrt(
        (n**2 - predicted_per_class @ predicted_per_class)
        * (n**2 - true_per_class @ true_per_class)
    )
    return float(covariance / scale) if scale > 0 else 0.0


def pearson(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    scale = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / scale) if scale > 0 else 0.0


def rank_with_ties(x: npt.ArrayLike) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Runs of equal values: each gets the mean of the ordinal ranks it spans.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of start+1 .. end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    return pearson(rank_with_ties(x), rank_with_ties(y))


def classification_metrics(
    labels: npt.ArrayLike, logits: npt.ArrayLike, num_classes: int
) -> dict[str, float]:
    """accuracy and macro_f1; for two classes also f1 (of class 1) and mcc."""
    predictions = np.argmax(np.asarray(logits), axis=-1)
    out = {
        "accuracy": accuracy(labels, predictions),
        "macro_f1": macro_f1(labels, predictions, num_classes),
    }
    if num_classes == 2:
        out["f1"] = binary_f1(labels, predictions)
        out["mcc"] = matthews_corrcoef(labels, predictions, 2)
    return out


def regression_metrics(labels: npt.ArrayLike, scores: npt.ArrayLike) -> dict[str, float]:
    """pearson and spearman correlation of predicted scores with the labels (GLUE's STS-B)."""
    return {"pearson": pearson(scores, labels), "spearman": spearman(scores, labels)}
