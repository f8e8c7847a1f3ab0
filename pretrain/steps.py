"""The train state, the pure module-level step functions, and their jitted, sharded forms.

Nothing here touches the host: the trainer binds the static pieces (graph definition,
optimizer, accumulation steps) with `functools.partial` and jits these functions with explicit
in/out shardings and the state donated.

Exact gradient accumulation: the loss of a global batch is
`sum(mlm losses) / sum(mlm weights) + sum(nsp losses) / sum(nsp weights)`. Both denominators are
known from the batch before any forward pass, so each microbatch contributes
`mlm_sum_i / W_mlm + nsp_sum_i / W_nsp` and the summed gradients equal the one-big-batch gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pretrain import losses, sharding
from pretrain.model import BertConfig, BertForPreTraining

# Separates the dropout stream from the parameter-init stream of the same seed.
_DROPOUT_STREAM = 1


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: optimizer steps taken.
    params: nnx.State  # float32 parameters, each an nnx.Param carrying its logical axes.
    opt_state: optax.OptState  # Moments shaped (and sharded) like params.
    bad_steps: jax.Array  # int32 []: steps whose update was dropped for a non-finite value.
    first_bad_step: jax.Array  # int32 []: the first such step, -1 if none.


def init_train_state(
    key: jax.Array, *, model_config: BertConfig, tx: optax.GradientTransformation
) -> TrainState:
    """A fresh state; jitted with `out_shardings` so each device creates only its own shard."""
    model = BertForPreTraining(model_config, rngs=nnx.Rngs(params=key))
    params = nnx.state(model, nnx.Param)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        bad_steps=jnp.zeros((), jnp.int32),
        first_bad_step=jnp.full((), -1, jnp.int32),
    )


def _forward(graphdef: nnx.GraphDef, params: nnx.State, batch: dict, deterministic: bool, key):
    model = nnx.merge(graphdef, params)
    rngs = None if deterministic else nnx.Rngs(dropout=key)
    return model(
        batch["input_ids"],
        batch["input_mask"],
        batch["segment_ids"],
        batch["masked_lm_positions"],
        deterministic=deterministic,
        rngs=rngs,
    )


def _split_microbatches(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B/k, ...] with microbatch i = rows i, i+k, i+2k, ...

    Strided (not contiguous) microbatches keep every device's rows in every microbatch, so the
    reshape moves no data between devices.
    """
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def accumulate_gradients(
    grad_fn: Any, params: nnx.State, batch: dict, grad_accum_steps: int, key: jax.Array
) -> tuple[Any, Any]:
    """(summed aux terms, summed gradients) of `grad_fn` over strided microbatches.

    `grad_fn(params, microbatch, key) -> ((loss, terms), grads)`, its loss already divided by
    the whole batch's weight, so the sums are exactly the big-batch values. Microbatch i gets
    dropout key `fold_in(key, i)`.
    """
    if grad_accum_steps == 1:
        (_, terms), grads = grad_fn(params, batch, key)
        return terms, grads
    micro = _split_microbatches(batch, grad_accum_steps)

    def accumulate(acc, xs):
        i, mb = xs
        return jax.tree.map(jnp.add, acc, grad_fn(params, mb, jax.random.fold_in(key, i))), None

    first = jax.tree.map(lambda x: x[0], micro)
    out_shapes = jax.eval_shape(grad_fn, params, first, key)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shapes)
    ((_, terms), grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
    return terms, grads


def apply_finite_update(
    state: TrainState, grads: Any, loss: jax.Array, tx: optax.GradientTransformation
) -> tuple[TrainState, jax.Array]:
    """The optimizer update, or, for a non-finite loss or gradient, the old state counted as bad.

    The host decides whether to stop (config.max_bad_steps) when it next reads the counters.
    """
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_new = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=keep_new(params, state.params),
        opt_state=keep_new(opt_state, state.opt_state),
        bad_steps=state.bad_steps + jnp.where(finite, 0, 1),
        first_bad_step=jnp.where(
            finite | (state.first_bad_step >= 0), state.first_bad_step, state.step
        ),
    )
    return new_state, grad_norm


def applied_learning_rate(state: TrainState, schedule: optax.Schedule) -> jax.Array:
    """The rate this step's update uses: the optimizer counts applied updates only, so each
    skipped non-finite step holds the schedule back by one."""
    return schedule(state.step - state.bad_steps)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int,
    seed: int,
    deterministic: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch, accumulated over `grad_accum_steps` microbatches."""
    mlm_total = jnp.maximum(batch["masked_lm_weights"].sum(), 1.0)
    nsp_total = jnp.maximum(batch["next_sentence_weights"].sum(), 1.0)
    step_key = jax.random.fold_in(
        jax.random.fold_in(jax.random.key(seed), _DROPOUT_STREAM), state.step
    )

    def loss_fn(params, micro, key):
        mlm_logits, nsp_logits = _forward(graphdef, params, micro, deterministic, key)
        terms = losses.pretraining_loss_terms(mlm_logits, nsp_logits, micro)
        loss = terms["mlm_loss_sum"] / mlm_total + terms["nsp_loss_sum"] / nsp_total
        return loss, terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    terms, grads = accumulate_gradients(grad_fn, state.params, batch, grad_accum_steps, step_key)
    loss = terms["mlm_loss_sum"] / mlm_total + terms["nsp_loss_sum"] / nsp_total
    new_state, grad_norm = apply_finite_update(state, grads, loss, tx)
    metrics = {
        "loss": loss,
        "mlm_loss": terms["mlm_loss_sum"] / mlm_total,
        "nsp_loss": terms["nsp_loss_sum"] / nsp_total,
        "mlm_accuracy": terms["mlm_correct"] / mlm_total,
        "nsp_accuracy": terms["nsp_correct"] / nsp_total,
        "learning_rate": applied_learning_rate(state, schedule),
        "grad_norm": grad_norm,
    }
    return new_state, metrics


def eval_step(params: nnx.State, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef) -> dict:
    """Sums (never means) over the batch, so padded batches and many hosts add up exactly."""
    mlm_logits, nsp_logits = _forward(graphdef, params, batch, True, None)
    return losses.pretraining_loss_terms(mlm_logits, nsp_logits, batch)


def eval_metrics(totals: dict[str, Any]) -> dict[str, float]:
    """Eval rows of metrics.jsonl from the summed terms of all eval batches."""
    mlm_w = max(float(totals["mlm_weight"]), 1.0)
    nsp_w = max(float(totals["nsp_weight"]), 1.0)
    return {
        "eval_mlm_loss": float(totals["mlm_loss_sum"]) / mlm_w,
        "eval_mlm_accuracy": float(totals["mlm_correct"]) / mlm_w,
        "eval_nsp_loss": float(totals["nsp_loss_sum"]) / nsp_w,
        "eval_nsp_accuracy": float(totals["nsp_correct"]) / nsp_w,
    }


@dataclasses.dataclass(frozen=True)
class JittedSteps:
    """The jitted init/train/eval functions for one model on one mesh, and their shardings."""

    abstract_state: TrainState  # Shapes and dtypes only.
    state_shardings: TrainState  # NamedSharding per leaf, from the logical-axis rules.
    batch_sharding: NamedSharding
    init: Any  # () -> TrainState from the seed, created already sharded.
    train_step: Any  # (state, batch) -> (state, metrics); the state is donated.
    eval_step: Any  # (params, batch) -> summed loss terms.

    def abstract_state_with_shardings(self) -> Any:
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract_state,
            self.state_shardings,
        )


def compile_ahead(train_step: Any, state: Any, batches: Iterator) -> tuple[Any, Iterator, float]:
    """(compiled step, the same batches, compile seconds), compiled on the first batch.

    Compiling ahead of time keeps compilation out of step timings, and makes a later batch of
    another shape or sharding an error instead of a silent recompile.
    """
    start = time.time()
    first = next(batches)
    compiled = train_step.lower(state, first).compile()
    return compiled, itertools.chain([first], batches), time.time() - start


def build_steps(
    model_config: BertConfig,
    tx: Any,
    schedule: Any,
    mesh: Mesh,
    rules: sharding.Rules,
    *,
    grad_accum_steps: int,
    seed: int,
    deterministic: bool = False,
) -> JittedSteps:
    """Jits the pure step functions of `pretrain/steps.py` with explicit in/out shardings."""
    init_fn = functools.partial(init_train_state, model_config=model_config, tx=tx)
    abstract_state = jax.eval_shape(init_fn, jax.random.key(seed))
    state_shardings = sharding.state_shardings(abstract_state, mesh, rules)
    abstract_model = nnx.eval_shape(lambda: BertForPreTraining(model_config, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract_model, nnx.Param)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = sharding.batch_sharding(mesh, rules)
    train_fn = functools.partial(
        train_step,
        graphdef=graphdef,
        tx=tx,
        schedule=schedule,
        grad_accum_steps=grad_accum_steps,
        seed=seed,
        deterministic=deterministic,
    )
    return JittedSteps(
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        init=lambda: jax.jit(init_fn, out_shardings=state_shardings)(jax.random.key(seed)),
        train_step=jax.jit(
            train_fn,
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        ),
        eval_step=jax.jit(
            functools.partial(eval_step, graphdef=graphdef),
            in_shardings=(state_shardings.params, batch_sharding),
            out_shardings=replicated,
        ),
    )
