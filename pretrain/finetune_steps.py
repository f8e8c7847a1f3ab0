"""Task models and the pure, jitted step functions of fine-tuning (pretrain/steps.py's sibling).

The train state, sharding, mixed precision and exact accumulation are pretraining's: a global
batch's loss is `sum(example losses) / sum(example weights)`, both sums over the whole batch, so
each microbatch contributes `loss_sum_i / W` and the summed gradients equal the big-batch one;
eval padding rows (weight 0) drop out. Dropout is keyed by (seed, step), not by the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pretrain import sharding, steps
from pretrain.model import BertConfig, BertForSequenceClassification
from pretrain.steps import TrainState

_DROPOUT_STREAM = 1  # Separates the dropout stream from the parameter-init stream of the seed.


# ------------------------------------------------------------------------------------------------
# Task models


class BertForSequenceRegression(BertForSequenceClassification):
    """The sequence classifier with a single output unit: a score per example, [B, 1]."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, num_labels=2, rngs=rngs)
        init = jax.nn.initializers.truncated_normal(stddev=config.initializer_range)
        self.classifier = nnx.Linear(
            config.hidden_size,
            1,
            kernel_init=nnx.with_metadata(init, logical_axes=("embed", "classes")),
            bias_init=nnx.with_metadata(jax.nn.initializers.zeros, logical_axes=("classes",)),
            dtype=jnp.float32,
            param_dtype=config.param_dtype,
            rngs=rngs,
        )


def build_model(
    model_config: BertConfig, num_labels: int, classifier_dropout: float, rngs: nnx.Rngs
) -> BertForSequenceClassification:
    """The classifier for `num_labels` classes, or the regressor when num_labels is 0."""
    if num_labels:
        model = BertForSequenceClassification(model_config, num_labels, rngs=rngs)
    else:
        model = BertForSequenceRegression(model_config, rngs=rngs)
    model.dropout = nnx.Dropout(classifier_dropout)  # The head's own rate, not the encoder's.
    return model


# ------------------------------------------------------------------------------------------------
# Pure step functions (jitted with explicit shardings in `build_steps`)


def init_train_state(
    key: jax.Array, encoder: nnx.State | None, *, make_model: Callable, tx: Any
) -> TrainState:
    """A fresh state; `encoder` (restored `bert` params) replaces the random encoder if given."""
    params = nnx.state(make_model(nnx.Rngs(params=key)), nnx.Param)
    if encoder is not None:
        params["bert"] = encoder  # The random encoder is dead code: XLA never computes it.
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        bad_steps=jnp.zeros((), jnp.int32),
        first_bad_step=jnp.full((), -1, jnp.int32),
    )


def _forward(graphdef, params, batch: dict, key: jax.Array | None) -> jax.Array:
    """Outputs [B, L] float32 (L = 1 for regression); dropout on when `key` is given."""
    model = nnx.merge(graphdef, params)
    return model(
        batch["input_ids"],
        batch["input_mask"],
        batch["segment_ids"],
        deterministic=key is None,
        rngs=None if key is None else nnx.Rngs(dropout=key),
    )


def loss_terms(outputs: jax.Array, batch: dict, regression: bool) -> dict[str, jax.Array]:
    """Sums over the batch of the weighted loss (cross-entropy or squared error) and hits."""
    weights = batch["example_weight"]  # [B]
    if regression:
        error = outputs[:, 0] - batch["label"]
        # where(): a weight-0 padding row contributes 0 even if its output is not finite.
        loss_sum = jnp.sum(jnp.where(weights > 0, weights * error**2, 0.0))
        return {"loss_sum": loss_sum, "weight": weights.sum()}
    log_probs = jax.nn.log_softmax(outputs, axis=-1)  # [B, L]
    label_log_probs = jnp.take_along_axis(log_probs, batch["label"][:, None], axis=-1)[:, 0]
    hits = (jnp.argmax(outputs, axis=-1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(jnp.where(weights > 0, -label_log_probs * weights, 0.0)),
        "weight": weights.sum(),
        "correct": jnp.sum(hits * weights),
    }


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    regression: bool,
    grad_accum_steps: int,
    seed: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step; microbatch i contributes loss_sum_i / (weight of the whole batch)."""
    total = jnp.maximum(batch["example_weight"].sum(), 1.0)
    step_key = jax.random.fold_in(
        jax.random.fold_in(jax.random.key(seed), _DROPOUT_STREAM), state.step
    )

    def loss_fn(params, micro, key):
        terms = loss_terms(_forward(graphdef, params, micro, key), micro, regression)
        return terms["loss_sum"] / total, terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    terms, grads = steps.accumulate_gradients(
        grad_fn, state.params, batch, grad_accum_steps, step_key
    )
    loss = terms["loss_sum"] / total
    new_state, grad_norm = steps.apply_finite_update(state, grads, loss, tx)
    metrics = {
        "loss": loss,
        "learning_rate": steps.applied_learning_rate(state, schedule),
        "grad_norm": grad_norm,
    }
    if not regression:
        metrics["accuracy"] = terms["correct"] / total
    return new_state, metrics


def eval_step(
    params: nnx.State, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef, regression: bool
) -> tuple[jax.Array, jax.Array]:
    """(outputs [B, L], loss sum); replicated on return, so every process sees every row."""
    outputs = _forward(graphdef, params, batch, None)
    return outputs, loss_terms(outputs, batch, regression)["loss_sum"]


@dataclasses.dataclass(frozen=True)
class FinetuneSteps:
    """Jitted init/train/eval functions for one task model on one mesh, and their shardings."""

    mesh: Mesh
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings.
    init: Callable[[], TrainState]  # Random init, created already sharded.
    init_with_encoder: Callable[[nnx.State], TrainState]  # Restored encoder + new head.
    train_step: Callable  # (state, batch) -> (state, metrics); the state is donated.
    eval_step: Callable  # (params, batch) -> (outputs, loss sum).


def build_steps(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    rules: sharding.Rules,
    *,
    regression: bool,
    grad_accum_steps: int,
    seed: int,
) -> FinetuneSteps:
    """Jits the step functions above with in/out shardings from the logical-axis rules."""
    init_fn = functools.partial(init_train_state, make_model=make_model, tx=tx)
    key = jax.random.key(seed)
    abstract = jax.eval_shape(init_fn, key, None)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))), nnx.Param)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    train_fn = functools.partial(
        train_step,
        graphdef=graphdef,
        tx=tx,
        schedule=schedule,
        regression=regression,
        grad_accum_steps=grad_accum_steps,
        seed=seed,
    )
    # The restored encoder's buffers become the state's: donated, not copied.
    with_encoder = jax.jit(
        init_fn,
        in_shardings=(None, shardings.params["bert"]),
        out_shardings=shardings,
        donate_argnums=1,
    )
    return FinetuneSteps(
        mesh=mesh,
        abstract_state=jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        ),
        init=lambda: jax.jit(init_fn, static_argnums=1, out_shardings=shardings)(key, None),
        init_with_encoder=lambda encoder: with_encoder(key, encoder),
        train_step=jax.jit(
            train_fn,
            in_shardings=(shardings, batch_sharding),
            out_shardings=(shardings, replicated),
            donate_argnums=0,
        ),
        eval_step=jax.jit(
            functools.partial(eval_step, graphdef=graphdef, regression=regression),
            in_shardings=(shardings.params, batch_sharding),
            out_shardings=replicated,
        ),
    )
