"""Tests for pretrain/losses.py against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.training import losses


def test_cross_entropy_hand_computed():
    # Row 0: softmax([0, ln 3]) = [1/4, 3/4]; label 1 -> -ln(3/4). Row 1: uniform over 4 -> ln 4.
    logits = jnp.array([[0.0, math.log(3.0), -jnp.inf, -jnp.inf], [1.0, 1.0, 1.0, 1.0]])
    labels = jnp.array([1, 2])
    loss_sum, weight = losses.weighted_cross_entropy(logits, labels, jnp.array([1.0, 2.0]))
    assert loss_sum.dtype == jnp.float32 and weight.dtype == jnp.float32
    np.testing.assert_allclose(loss_sum, -math.log(0.75) + 2 * math.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(weight, 3.0)


def test_zero_weights_are_excluded_even_when_non_finite():
    logits = jnp.array([[0.0, math.log(3.0)], [jnp.nan, jnp.nan], [5.0, -5.0]])
    labels = jnp.array([0, 1, 1])
    weights = jnp.array([1.0, 0.0, 0.0])
    loss_sum, weight = losses.weighted_cross_entropy(logits, labels, weights)
    np.testing.assert_allclose(loss_sum, -math.log(0.25), rtol=1e-6)
    np.testing.assert_allclose(weight, 1.0)
    correct, weight = losses.weighted_accuracy(logits, labels, weights)
    np.testing.assert_allclose((correct, weight), (0.0, 1.0))  # argmax of row 0 is 1, label 0.


def test_bf16_logits_are_upcast():
    # -log softmax([0, 8])[0] = 8.000335; bf16 (spacing 1/16 near 8) would round it to 8.0.
    logits = jnp.array([[0.0, 8.0]], jnp.bfloat16)
    loss_sum, _ = losses.weighted_cross_entropy(logits, jnp.array([0]), jnp.array([1.0]))
    assert loss_sum.dtype == jnp.float32
    np.testing.assert_allclose(loss_sum, 8.0 + math.log1p(math.exp(-8.0)), rtol=1e-6)


def test_accuracy_hand_computed():
    logits = jnp.array([[[0.1, 0.9, 0.0], [2.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [1.0, 5.0, 2.0]]])
    labels = jnp.array([[1, 1], [2, 0]])  # correct, wrong, correct, wrong
    weights = jnp.array([[1.0, 1.0], [0.5, 0.0]])
    correct, weight = losses.weighted_accuracy(logits, labels, weights)
    np.testing.assert_allclose((correct, weight), (1.5, 2.5))


def _batch(rng: np.random.Generator, b: int, p: int, v: int) -> tuple:
    mlm_logits = jnp.asarray(rng.normal(size=(b, p, v)), jnp.float32)
    nsp_logits = jnp.asarray(rng.normal(size=(b, 2)), jnp.float32)
    batch = {
        "masked_lm_ids": jnp.asarray(rng.integers(0, v, size=(b, p)), jnp.int32),
        "masked_lm_weights": jnp.asarray(rng.integers(0, 2, size=(b, p)), jnp.float32),
        "next_sentence_labels": jnp.asarray(rng.integers(0, 2, size=(b,)), jnp.int32),
        "next_sentence_weights": jnp.array([1.0] * (b - 1) + [0.0]),
    }
    return mlm_logits, nsp_logits, batch


def test_pretraining_terms_match_numpy_reference():
    mlm_logits, nsp_logits, batch = _batch(np.random.default_rng(0), 4, 5, 11)
    terms = losses.pretraining_loss_terms(mlm_logits, nsp_logits, batch)

    def reference(logits, labels, w):
        logits = np.asarray(logits, np.float64)
        log_z = np.log(np.exp(logits).sum(-1))
        nll = log_z - np.take_along_axis(logits, np.asarray(labels)[..., None], -1)[..., 0]
        hit = logits.argmax(-1) == np.asarray(labels)
        return (nll * w).sum(), np.sum(w), (hit * w).sum()

    mlm = reference(mlm_logits, batch["masked_lm_ids"], batch["masked_lm_weights"])
    nsp = reference(nsp_logits, batch["next_sentence_labels"], batch["next_sentence_weights"])
    got = [terms[k] for k in ("mlm_loss_sum", "mlm_weight", "mlm_correct")]
    np.testing.assert_allclose(got, mlm, rtol=1e-5)
    got = [terms[k] for k in ("nsp_loss_sum", "nsp_weight", "nsp_correct")]
    np.testing.assert_allclose(got, nsp, rtol=1e-5)
    assert terms["nsp_weight"] == 3.0  # The last row is eval padding.


@pytest.mark.parametrize("split", [1, 3])
def test_sums_over_parts_equal_sum_over_whole(split):
    mlm_logits, nsp_logits, batch = _batch(np.random.default_rng(1), 4, 5, 11)
    whole = losses.pretraining_loss_terms(mlm_logits, nsp_logits, batch)
    first = losses.pretraining_loss_terms(
        mlm_logits[:split], nsp_logits[:split], {k: v[:split] for k, v in batch.items()}
    )
    second = losses.pretraining_loss_terms(
        mlm_logits[split:], nsp_logits[split:], {k: v[split:] for k, v in batch.items()}
    )
    names = ("mlm_loss_sum", "mlm_weight", "mlm_correct", "nsp_loss_sum", "nsp_weight")
    assert set(whole) == {*names, "nsp_correct"}
    for key in whole:
        np.testing.assert_allclose(first[key] + second[key], whole[key], rtol=1e-6)
