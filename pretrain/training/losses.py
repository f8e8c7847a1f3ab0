"""Weighted cross-entropy and accuracy for the MLM and NSP heads, as (sum, weight) pairs.

Nothing here takes a mean: the train and eval steps add the sums over microbatches, devices and
eval batches, then divide once by the total weight of the global batch. That keeps gradient
accumulation exact and lets padded eval rows (weight 0) drop out.
"""

import jax
import jax.numpy as jnp


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """logits [..., C], integer labels [...], weights [...] -> (sum of w * -log p, sum of w)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [..., C]
    label_log_probs = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]  # [...]
    weights = weights.astype(jnp.float32)
    # where() rather than a product: a weight-0 row with non-finite logits contributes 0, not NaN.
    loss_sum = jnp.sum(jnp.where(weights > 0, -label_log_probs * weights, 0.0))
    return loss_sum, jnp.sum(weights)


def weighted_accuracy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """logits [..., C], labels [...], weights [...] -> (sum of w * [argmax == label], sum of w)."""
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)  # [...]
    weights = weights.astype(jnp.float32)
    return jnp.sum(correct * weights), jnp.sum(weights)


def mlm_loss_terms(mlm_logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Masked-LM sums and weight; mlm_logits [B, P, V] (float32 scalars)."""
    mlm_ids, mlm_w = batch["masked_lm_ids"], batch["masked_lm_weights"]
    mlm_loss_sum, mlm_weight = weighted_cross_entropy(mlm_logits, mlm_ids, mlm_w)
    mlm_correct, _ = weighted_accuracy(mlm_logits, mlm_ids, mlm_w)
    return {"mlm_loss_sum": mlm_loss_sum, "mlm_weight": mlm_weight, "mlm_correct": mlm_correct}


def pretraining_loss_terms(
    mlm_logits: jax.Array, nsp_logits: jax.Array, batch: dict[str, jax.Array]
) -> dict[str, jax.Array]:
    """Sums and weights for both heads; mlm_logits [B, P, V], nsp_logits [B, 2] (float32 scalars).

    Uses batch['masked_lm_ids'], ['masked_lm_weights'], ['next_sentence_labels'] and
    ['next_sentence_weights'].
    """
    nsp_labels, nsp_w = batch["next_sentence_labels"], batch["next_sentence_weights"]
    nsp_loss_sum, nsp_weight = weighted_cross_entropy(nsp_logits, nsp_labels, nsp_w)
    nsp_correct, _ = weighted_accuracy(nsp_logits, nsp_labels, nsp_w)
    return {
        **mlm_loss_terms(mlm_logits, batch),
        "nsp_loss_sum": nsp_loss_sum,
        "nsp_weight": nsp_weight,
        "nsp_correct": nsp_correct,
    }
