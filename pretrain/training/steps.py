"""The train state and the one step builder: jitted, sharded init / train / eval for any task.

A task (`pretrain/training/task.py`) supplies its model and its loss as sums; everything else is
here and shared: state creation already sharded, the logical-axis shardings of parameters and
optimizer moments, exact gradient accumulation, the finite-update guard, dropout keyed by
(seed, step), and the ahead-of-time compile. Nothing here touches the host.

Exact gradient accumulation: a task's loss is `sum_k S_k / W_k` where each W_k (e.g. the number
of masked positions) is known from the batch before any forward pass. Each microbatch i
contributes `sum_k S_k,i / W_k`, so the summed gradients equal the one-big-batch gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pretrain.models import layers
from pretrain.models.params import path_parts
from pretrain.training import sharding
from pretrain.training.task import Task

# Separates the dropout stream from the parameter-init stream of the same seed.
_DROPOUT_STREAM = 1


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: optimizer steps taken.
    params: nnx.State  # float32 parameters, each an nnx.Param carrying its logical axes.
    opt_state: optax.OptState  # Moments shaped (and sharded) like params.
    bad_steps: jax.Array  # int32 []: steps whose update was dropped for a non-finite value.
    first_bad_step: jax.Array  # int32 []: the first such step, -1 if none.
    # uint32 [2]: key data of the dropout stream (from the seed). State, not a constant of the
    # compiled step: runs that differ only in seed share one compilation.
    dropout_key: jax.Array


def init_train_state(
    key: jax.Array,
    overrides: dict[str, Any] | None,
    *,
    make_model: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
) -> TrainState:
    """A fresh state; `overrides` (a partial pure-dict parameter tree of restored values, e.g.
    the encoder) replace the initializer's values. Jitted with out_shardings, each device creates
    only its own shard, and XLA never computes a replaced initializer."""
    params = nnx.state(make_model(nnx.Rngs(params=key)), nnx.Param)
    if overrides:
        nnx.replace_by_pure_dict(params, _merge_into(nnx.to_pure_dict(params), overrides))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        bad_steps=jnp.zeros((), jnp.int32),
        first_bad_step=jnp.full((), -1, jnp.int32),
        dropout_key=jax.random.key_data(jax.random.fold_in(key, _DROPOUT_STREAM)),
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
        dropout_key=state.dropout_key,
    )
    return new_state, grad_norm


def applied_learning_rate(state: TrainState, schedule: Any) -> jax.Array:
    """The rate this step's update uses: the optimizer counts applied updates only, so each
    skipped non-finite step holds the schedule back by one."""
    return schedule.applied(state.opt_state, state.step - state.bad_steps)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    task: Task,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int,
    activation_sharding: NamedSharding | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch, accumulated over `grad_accum_steps` microbatches.

    `activation_sharding` (the batch's) keeps the layers' activations split over the batch.
    """
    weights = task.loss_weights(batch)  # Whole-batch denominators, before any forward pass.
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)

    def loss_fn(params, micro, key):
        model = nnx.merge(graphdef, params)
        sums = task.loss_sums(model, micro, nnx.Rngs(dropout=key))
        return task.metrics(sums, weights)["loss"], sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    with layers.activation_sharding(activation_sharding):
        sums, grads = accumulate_gradients(grad_fn, state.params, batch, grad_accum_steps, step_key)
    metrics = task.metrics(sums, weights)
    new_state, grad_norm = apply_finite_update(state, grads, metrics["loss"], tx)
    metrics["learning_rate"] = applied_learning_rate(state, schedule)
    metrics["grad_norm"] = grad_norm
    return new_state, metrics


def eval_step(
    params: nnx.State,
    batch: dict[str, jax.Array],
    *,
    task: Task,
    graphdef: nnx.GraphDef,
    activation_sharding: NamedSharding | None = None,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(sums, per-example outputs) of one eval batch, replicated so every process has all rows."""
    with layers.activation_sharding(activation_sharding):
        return task.eval_step(nnx.merge(graphdef, params), batch)


def freeze(tx: optax.GradientTransformation, frozen: Callable[[tuple[str, ...]], bool]):
    """`tx` on the parameters whose path is not `frozen`; the others get zero updates and no
    optimizer state. Their gradients are never read, so XLA drops the weight-gradient matmuls."""

    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if frozen(path_parts(path)) else "train", params
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _split_frozen(params: dict, frozen: Callable) -> dict:
    """The pure-dict tree without its frozen leaves (empty subtrees dropped)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {path: v for path, v in flat.items() if not frozen(tuple(map(str, path)))}
    )


def _select(tree: dict, like: dict) -> dict:
    """The part of `tree` with the keys of the partial tree `like`."""
    flat = traverse_util.flatten_dict(tree)
    return traverse_util.unflatten_dict({p: flat[p] for p in traverse_util.flatten_dict(like)})


def _merge_into(base: dict, update: dict) -> dict:
    """`base` with the leaves `update` also has replaced by `update`'s."""
    new = traverse_util.flatten_dict(update)
    flat = traverse_util.flatten_dict(base, keep_empty_nodes=True)
    return traverse_util.unflatten_dict({p: new.get(p, v) for p, v in flat.items()})


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted init/train/eval functions of one task on one mesh, and their shardings.

    A checkpoint holds `saveable(state)`: the whole state, or for a task with frozen
    parameters everything but those (`combine` puts a restored one back into a fresh state).
    """

    mesh: Mesh
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings.
    init: Callable[..., TrainState]  # (overrides=None) -> TrainState, created already sharded.
    train_step: Any  # (state, batch) -> (state, metrics); the state is donated.
    eval_step: Any  # (params, batch) -> (sums, outputs).
    frozen: Callable[[tuple[str, ...]], bool] | None = None

    def saveable(self, state: TrainState) -> TrainState:
        if self.frozen is None:
            return state
        params = _split_frozen(nnx.to_pure_dict(state.params), self.frozen)
        return state.replace(params=params)

    @property
    def abstract_saveable(self) -> TrainState:
        return self.saveable(self.abstract_state)

    def combine(self, saved: TrainState, fresh: TrainState) -> TrainState:
        """A restored `saveable` state completed with `fresh`'s frozen parameters."""
        return saved.replace(params=self.combine_params(saved.params, fresh.params))

    def combine_params(self, saved: Any, fresh: nnx.State) -> nnx.State:
        """Restored `saveable` params completed with `fresh`'s frozen ones."""
        if self.frozen is None:
            return saved
        nnx.replace_by_pure_dict(fresh, _merge_into(nnx.to_pure_dict(fresh), saved))
        return fresh


def build_steps(
    task: Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    rules: sharding.Rules,
    *,
    grad_accum_steps: int,
    seed: int,
) -> Steps:
    """Jits the step functions above for `task` with in/out shardings from the logical rules."""
    if task.frozen is not None:
        tx = freeze(tx, task.frozen)
    init_fn = functools.partial(init_train_state, make_model=task.make_model, tx=tx)
    key = jax.random.key(seed)
    abstract = jax.eval_shape(init_fn, key, None)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))), nnx.Param)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def init(overrides: dict[str, Any] | None = None) -> TrainState:
        override_shardings = _select(nnx.to_pure_dict(shardings.params), overrides or {})
        # Restored subtrees' buffers become the state's: donated, not copied.
        jitted = jax.jit(
            init_fn,
            in_shardings=(None, override_shardings or None),
            out_shardings=shardings,
            donate_argnums=1 if overrides else (),
        )
        return jitted(key, overrides or None)

    train_fn = functools.partial(
        train_step,
        task=task,
        graphdef=graphdef,
        tx=tx,
        schedule=schedule,
        grad_accum_steps=grad_accum_steps,
        activation_sharding=batch_sharding,
    )
    return Steps(
        mesh=mesh,
        abstract_state=jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        ),
        init=init,
        train_step=jax.jit(
            train_fn,
            in_shardings=(shardings, batch_sharding),
            out_shardings=(shardings, replicated),
            donate_argnums=0,
        ),
        eval_step=jax.jit(
            functools.partial(
                eval_step, task=task, graphdef=graphdef, activation_sharding=batch_sharding
            ),
            in_shardings=(shardings.params, batch_sharding),
            out_shardings=replicated,
        ),
        frozen=task.frozen,
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
