"""Fine-tuning metrics against values worked out by hand (and scipy for the correlations)."""

import numpy as np
import pytest
import scipy.stats

from pretrain.tasks import classification_metrics as cm

# 10 examples, binary. Confusion (rows true, columns predicted): [[4, 1], [2, 3]]
# TP=3 FP=1 FN=2 TN=4 for class 1.
BINARY_LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
BINARY_PREDS = np.array([0, 0, 0, 0, 1, 0, 0, 1, 1, 1])


def test_confusion_matrix_counts_true_by_predicted():
    np.testing.assert_array_equal(
        cm.confusion_matrix(BINARY_LABELS, BINARY_PREDS, 2), [[4, 1], [2, 3]]
    )


def test_binary_scores_by_hand():
    assert cm.accuracy(BINARY_LABELS, BINARY_PREDS) == pytest.approx(0.7)
    # F1(class 1) = 2*3 / (2*3 + 1 + 2) = 6/9; F1(class 0) = 2*4 / (2*4 + 2 + 1) = 8/11.
    assert cm.binary_f1(BINARY_LABELS, BINARY_PREDS) == pytest.approx(6 / 9)
    assert cm.binary_f1(BINARY_LABELS, BINARY_PREDS, positive=0) == pytest.approx(8 / 11)
    assert cm.macro_f1(BINARY_LABELS, BINARY_PREDS, 2) == pytest.approx((6 / 9 + 8 / 11) / 2)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 - 2) / sqrt(4*5*5*6).
    assert cm.matthews_corrcoef(BINARY_LABELS, BINARY_PREDS, 2) == pytest.approx(10 / np.sqrt(600))


def test_multiclass_macro_f1_and_mcc_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    # Per class: 0: TP1 FP1 FN1 -> 1/2; 1: TP2 FP1 FN0 -> 4/5; 2: TP1 FP0 FN1 -> 2/3.
    assert cm.macro_f1(labels, preds, 3) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # Gorodkin: c=4 correct, s=6, p=(2,3,1), t=(2,2,2):
    # (4*6 - (4+6+2)) / sqrt((36 - (4+9+1)) * (36 - 12)) = 12 / sqrt(22 * 24).
    assert cm.matthews_corrcoef(labels, preds, 3) == pytest.approx(12 / np.sqrt(22 * 24))


def test_macro_f1_skips_classes_absent_from_labels_and_predictions():
    # Class 2 of 3 never occurs: the average is over classes 0 and 1 only (scikit-learn's rule).
    assert cm.macro_f1([0, 1], [0, 1], 3) == 1.0


def test_degenerate_cases_are_zero_not_nan():
    assert cm.matthews_corrcoef([1, 1, 1], [1, 1, 1], 2) == 0.0  # One class only.
    assert cm.binary_f1([0, 0], [0, 0]) == 0.0  # No positives anywhere.
    assert cm.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0  # Constant input.


def test_classification_metrics_reads_argmax_of_logits():
    logits = np.zeros((10, 2))
    logits[np.arange(10), BINARY_PREDS] = 1.0
    got = cm.classification_metrics(BINARY_LABELS, logits, 2)
    assert got == pytest.approx(
        {
            "accuracy": 0.7,
            "macro_f1": (6 / 9 + 8 / 11) / 2,
            "f1": 6 / 9,
            "mcc": 10 / np.sqrt(600),
        }
    )
    three = cm.classification_metrics([0, 1, 2], np.eye(3), 3)
    assert set(three) == {"accuracy", "macro_f1"}  # f1 and mcc are binary-only.


def test_ranks_average_ties():
    np.testing.assert_array_equal(cm.rank_with_ties([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])


def test_correlations_by_hand_and_against_scipy():
    # Perfectly monotone but not linear: Spearman 1, Pearson below 1.
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 4.0, 9.0, 16.0])
    assert cm.spearman(x, y) == pytest.approx(1.0)
    assert cm.pearson(x, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(1.0)
    assert cm.pearson(x, -x) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    b = np.round(a + rng.normal(size=50), 1)  # Rounded: ties.
    got = cm.regression_metrics(b, a)
    assert got["pearson"] == pytest.approx(scipy.stats.pearsonr(a, b).statistic)
    assert got["spearman"] == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
