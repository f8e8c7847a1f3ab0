"""Optax optimizers for BERT: AdamW or LAMB, warmup then decay, weight-decay mask, clipping.

The defaults follow google-research/bert `optimization.py`: Adam with decoupled weight decay
0.01 that skips LayerNorm parameters and biases, eps 1e-6, linear warmup and linear decay to 0,
gradients clipped to global norm 1.0.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from data_pipeline.errors import ConfigError
from pretrain.models.params import path_parts

# Parameter leaf names that receive weight decay: matrices and embedding tables. Biases,
# LayerNorm scales and the MLM output bias do not (original BERT's exclusion list).
DECAYED_LEAF_NAMES = ("kernel", "embedding")


def warmup_steps(opt_config: ml_collections.ConfigDict, num_train_steps: int) -> int:
    """`warmup_steps`, or where it is -1 (fine-tuning), `warmup_fraction` of the run; never past
    the run, so a shortened run of any config warms up over all its steps (validation warns)."""
    warmup = int(opt_config.warmup_steps)
    if warmup == -1 and "warmup_fraction" in opt_config:
        return round(float(opt_config.warmup_fraction) * num_train_steps)
    return min(warmup, num_train_steps)


def learning_rate_schedule(
    opt_config: ml_collections.ConfigDict, num_train_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then to the end of the run: linear or polynomial decay,
    constant, or 'wsd' (warmup-stable-decay, the trapezoid of ModernBERT and MiniCPM: the peak
    until the last `decay_fraction` of the steps, then linear decay to the end rate)."""
    peak = float(opt_config.learning_rate)
    warmup = warmup_steps(opt_config, num_train_steps)
    if peak <= 0:
        raise ConfigError(f"config.optimizer.learning_rate must be > 0, got {peak}.")
    if warmup < 0:
        raise ConfigError(f"config.optimizer.warmup_steps must be >= 0, got {warmup}.")
    warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
    decay_steps = max(num_train_steps - warmup, 1)
    if opt_config.decay in ("linear", "polynomial"):
        power = 1.0 if opt_config.decay == "linear" else float(opt_config.decay_power)
        decay_fn = optax.polynomial_schedule(
            peak, float(opt_config.end_learning_rate), power, decay_steps
        )
    elif opt_config.decay == "constant":
        decay_fn = optax.constant_schedule(peak)
    elif opt_config.decay == "wsd":
        tail = max(round(float(opt_config.decay_fraction) * num_train_steps), 1)
        stable = max(num_train_steps - warmup - tail, 0)
        end = float(opt_config.end_learning_rate)
        decay_fn = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, end, tail)], [stable]
        )
    else:
        raise ConfigError(
            f"config.optimizer.decay must be 'linear', 'polynomial', 'constant' or 'wsd', "
            f"got {opt_config.decay!r}."
        )
    return optax.join_schedules([warmup_fn, decay_fn], [warmup])


def weight_decay_mask(params: Any) -> Any:
    """True for the leaves that get weight decay (kernels and embedding tables)."""

    def decayed(path: tuple[Any, ...], _: Any) -> bool:
        names = path_parts(path)
        return bool(names) and names[-1] in DECAYED_LEAF_NAMES

    return jax.tree_util.tree_map_with_path(decayed, params)


class LearningRate:
    """The schedule as two factors: a unit-peak shape over steps and the peak itself.

    The peak is not a constant of the compiled step: it lives in the optimizer state
    (`optax.inject_hyperparams`), so runs that differ only in learning rate (a GLUE sweep) share
    one compiled train step. Calling the object gives the rate at a step (host side).
    """

    def __init__(self, opt_config: ml_collections.ConfigDict, num_train_steps: int):
        self.peak = float(opt_config.learning_rate)
        self.absolute = learning_rate_schedule(opt_config, num_train_steps)  # Validates.
        unit = ml_collections.ConfigDict(opt_config.to_dict())
        unit.learning_rate = 1.0
        unit.end_learning_rate = float(opt_config.get("end_learning_rate", 0.0)) / self.peak
        self.unit = learning_rate_schedule(unit, num_train_steps)

    def __call__(self, step: Any) -> Any:
        return self.absolute(step)

    def applied(self, opt_state: Any, step: Any) -> jax.Array:
        """The rate at `step` with the peak read from the optimizer state (traced)."""
        return self.unit(step) * peak_learning_rate(opt_state)


def peak_learning_rate(opt_state: Any) -> jax.Array:
    """The injected peak rate held in an optimizer state made by `make_optimizer`."""
    is_injected = lambda x: "peak_learning_rate" in getattr(x, "hyperparams", {})  # noqa: E731
    for node in jax.tree.leaves(opt_state, is_leaf=is_injected):
        if is_injected(node):
            return node.hyperparams["peak_learning_rate"]
    raise ValueError("the optimizer state holds no injected peak learning rate.")


def make_optimizer(
    opt_config: ml_collections.ConfigDict, num_train_steps: int, num_layers: int = 0
) -> tuple[optax.GradientTransformation, LearningRate]:
    """The optimizer named by `config.optimizer.name`, with clipping, and its schedule.

    optax's `adamw` / `lamb` chains spelled out, with the learning rate split into the schedule's
    unit shape and the injected peak (`LearningRate`): the same updates. With
    `optimizer.layerwise_lr_decay` below 1 (a fine-tuning key) each of the `num_layers` encoder
    layers gets its own rate (`scale_by_layerwise_lr_decay`).
    """
    schedule = LearningRate(opt_config, num_train_steps)
    if opt_config.name not in ("adamw", "lamb"):
        raise ConfigError(
            f"config.optimizer.name must be 'adamw' or 'lamb', got {opt_config.name!r}."
        )

    def build(peak_learning_rate: float) -> optax.GradientTransformation:
        parts = [
            optax.scale_by_adam(
                b1=float(opt_config.b1), b2=float(opt_config.b2), eps=float(opt_config.eps)
            ),
            optax.add_decayed_weights(float(opt_config.weight_decay), mask=weight_decay_mask),
        ]
        if opt_config.name == "lamb":
            parts.append(optax.scale_by_trust_ratio())
        parts += [optax.scale_by_schedule(schedule.unit), optax.scale(-peak_learning_rate)]
        return optax.chain(*parts)

    tx = optax.inject_hyperparams(build)(peak_learning_rate=schedule.peak)
    if float(opt_config.max_grad_norm) > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(opt_config.max_grad_norm)), tx)
    decay = float(opt_config.get("layerwise_lr_decay", 1.0))
    if decay != 1.0:
        tx = optax.chain(tx, scale_by_layerwise_lr_decay(decay, num_layers))
    return tx, schedule


def layer_depth(path: tuple[Any, ...], num_layers: int) -> int:
    """Depth of a parameter for layer-wise learning-rate decay.

    Embeddings are depth 0, encoder layer i is i + 1, and everything above the layers (final
    norm, pooler, task heads) is num_layers + 1.
    """
    names = path_parts(path)
    if names[:2] == ("encoder", "embeddings"):
        return 0
    if names[:2] == ("encoder", "layers"):
        return int(names[2]) + 1
    return num_layers + 1


def scale_by_layerwise_lr_decay(decay: float, num_layers: int) -> optax.GradientTransformation:
    """Scales the update of a parameter at depth d by decay ** (num_layers + 1 - d).

    Chained after AdamW, whose update already holds -lr * (adam direction + weight decay), this
    gives every layer its own learning rate: the top one the schedule's, each layer below it
    `decay` times less (ELECTRA, Clark et al. 2020). The multipliers are static, so no state.
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"config.optimizer.layerwise_lr_decay must be in (0, 1], got {decay}.")

    def update_fn(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * decay ** (num_layers + 1 - layer_depth(path, num_layers)), updates
        )
        return scaled, state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)
