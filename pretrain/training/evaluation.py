"""One pass of a task's eval step over its eval data: shared by the training loop and by
`pretrain.evaluate` / `pretrain.predict` (pretrain/inference/).

`Feed` is how this process's rows of a global batch reach the devices; `evaluate` sums the eval
step's sums over the batches and gathers its outputs in example order (padding rows cut off).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pretrain.training import sharding
from pretrain.training.task import Task

Put = Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]


class Feed:
    """This process's rows of a global batch of `batch_size`, and how they reach the devices."""

    def __init__(self, mesh: jax.sharding.Mesh, rules: sharding.Rules, batch_size: int):
        self.rows = sharding.process_rows(mesh, rules, batch_size)
        self.put: Put = lambda local: sharding.host_to_global(local, mesh, rules, batch_size)


def evaluate(
    eval_step: Any, params: Any, task: Task, feed: Feed, metrics: bool = True
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The eval row of a full pass over `task.eval_data` (`metrics=False`: none, for unlabelled
    data), and its outputs in example order."""
    data = task.eval_data
    totals, gathered = None, []
    for i in range(data.num_batches):
        sums, outputs = eval_step(params, feed.put(data.batch(i, rows=feed.rows)))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if outputs:
            gathered.append(jax.device_get(outputs))
    outputs = {}
    if gathered:  # Padding rows come last: cut them off.
        outputs = {
            k: np.concatenate([g[k] for g in gathered])[: data.num_examples] for k in gathered[0]
        }
    row = task.eval_metrics(jax.device_get(totals), outputs) if metrics else {}
    return row, outputs
