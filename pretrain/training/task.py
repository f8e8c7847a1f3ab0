"""What a task is: everything the one training loop (`pretrain/training/loop.py`) needs to know.

A task module defines a `Task` subclass. The loop calls `check_config(config)` before any
work, `build(config, workdir)` after the workdir claim (tokenizer, data), then asks it for:

  * its data: `train_data.batch(step, rows)` (a pure function of the step) and, optionally,
    `eval_data` (`num_batches`, `num_examples`, `batch(i, rows)`; padding rows weigh 0);
  * its model: `make_model(rngs)`, an encoder plus the task's heads (`pretrain/models/heads.py`);
  * its loss as sums: `loss_weights(batch)` (the denominators, from the batch alone, known before
    any forward pass) and `loss_sums(model, batch, rngs)` (sums over the batch's rows); then
    `metrics(sums, weights)` divides them, and its "loss" entry is what is minimized. Because
    every term is linear in the sums, gradient accumulation over microbatches, several devices
    and several hosts all add up to exactly the big-batch gradient;
  * its evaluation: `eval_step(model, batch) -> (sums, outputs)`, summed / gathered over the whole
    eval set by the loop, then `eval_metrics(sums, outputs)` -> the eval row;
  * optional hooks: `initial_params` (weights restored from elsewhere, e.g. a pretrained
    encoder), `best_metric` (the eval row key that picks WORKDIR/best), `on_end` (e.g. writing
    predictions from the best checkpoint), `flops_per_token` (for MFU).

The loop never names a task; a new task is one new module here, its data reader in
`data_pipeline/tasks/`, and its config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from pretrain.models.config import EncoderConfig

Batch = Mapping[str, jax.Array]
Sums = dict[str, jax.Array]


class TrainData(Protocol):
    batch_size: int  # The global batch: rows of every process together.

    def batch(self, step: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


class EvalData(Protocol):
    batch_size: int
    num_batches: int
    num_examples: int

    def batch(self, i: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


class Task:
    """Base class with the optional parts left empty; see the module docstring."""

    kind: ClassVar[str]  # The workdir kind it makes: 'pretraining' | 'finetuning'.
    best_metric: str | None = None  # Eval row key (higher is better) kept in WORKDIR/best.
    model_config: EncoderConfig
    seq_len: int  # Tokens per example, for tokens/s.
    train_data: TrainData
    eval_data: EvalData | None = None
    # Parameter paths that do not train (e.g. a LoRA run's encoder): no optimizer state, not in
    # the task's checkpoints (they come from `initial_params` on every start). None: all train.
    frozen: Callable[[tuple[str, ...]], bool] | None = None

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        """Cheap checks before any work; raises ConfigError."""

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, workdir: epath.Path) -> Task:
        """The task with its tokenizer and data prepared (writing into WORKDIR as needed)."""
        raise NotImplementedError

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def loss_weights(self, batch: Batch) -> Sums:
        raise NotImplementedError

    def loss_sums(self, model: nnx.Module, batch: Batch, rngs: nnx.Rngs | None) -> Sums:
        """Sums over the batch's rows; `rngs` (a dropout stream) is None in deterministic mode."""
        raise NotImplementedError

    def metrics(self, sums: Sums, weights: Sums) -> dict[str, jax.Array]:
        """Train metrics from sums and weights; linear in `sums`, with a 'loss' entry."""
        raise NotImplementedError

    def eval_step(self, model: nnx.Module, batch: Batch) -> tuple[Sums, dict[str, jax.Array]]:
        raise NotImplementedError

    def eval_metrics(self, sums: dict[str, Any], outputs: dict[str, np.ndarray]) -> dict:
        raise NotImplementedError

    def initial_params(self, abstract_params: nnx.State) -> dict[str, nnx.State] | None:
        """Top-level parameter subtrees to start from instead of the initializer's (placed in
        the shardings of `abstract_params`), or None."""
        return None

    def flops_per_token(self) -> float | None:
        return None

    def checkpoint_record(self) -> dict[str, Any]:
        """The config saved with every checkpoint (what tools reading the checkpoint need)."""
        raise NotImplementedError

    def on_end(self, workdir: epath.Path, outputs: dict[str, np.ndarray] | None) -> None:
        """After the last step, with the outputs of the best (or last) evaluation."""
