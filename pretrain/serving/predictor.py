"""Items in, `pretrain.predict`'s rows out, through exported functions of a few fixed shapes.

The task builds the features of a batch of items exactly as `pretrain.predict` does (its
`load_inputs` on the items written by `inputs.write_inputs`), at `max_seq_length` = the largest
bucket. Each batch of `batch_size` rows is cut to the smallest length bucket that holds its
longest row (padding is zeros on the right, and attention never reads it) and to the smallest
row bucket (1, 2, 4, ...) that holds its rows (padding rows come last), run through that
executable, and the outputs are padded back (with 0, or -1e9 for floats: what the model gives a
padding position) so the task's own `prediction_rows` turns them into labels, entities, spans or
embeddings, as from the full-size call.

Every (rows, length) pair is compiled ahead of time by `warm_up`; a compiled executable refuses
other shapes rather than compiling, so nothing compiles after warm-up (the small jitted softmax
of classification's post-processing is warmed for every number of items too).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from pretrain.serving import inputs
from pretrain.serving.inputs import Item
from pretrain.tasks.finetuning import FinetuningTask

_PAD_LOGIT = -1e9  # What the task models give a padding position (QA masks with it).


class Predictor:
    """A task's model behind `jax.export`ed functions, one per sequence-length bucket.

    `functions[bucket]` is an `Exported` whose arguments are (parameter leaves, features of
    [batch, bucket]), the batch symbolic; it is compiled for each row bucket (`row_buckets`
    of `info["batch_size"]`). `info` is the manifest (`artifact.py`).
    """

    def __init__(self, task: FinetuningTask, functions: dict[int, jax.export.Exported],
                 params: list[Any], info: dict[str, Any]):  # fmt: skip
        self.task = task
        self.name = task.config.task
        self.buckets = sorted(functions)
        self.batch_size = int(info["batch_size"])
        self.info = info
        self.accepts = inputs.ACCEPTS[self.name]
        self._exported = functions
        self._params = jax.device_put(params)
        self.row_buckets = row_buckets(self.batch_size)
        self._compiled: dict[tuple[int, int], Any] = {}  # (rows, length) -> executable
        # Each bucket's features: (parameter leaves, features) are its arguments.
        self._features = {b: argument_avals(e)[1] for b, e in functions.items()}
        self._lock = threading.Lock()  # The task holds one batch's inputs at a time.
        self._scratch = tempfile.TemporaryDirectory(prefix="serving-")
        task.config.unlock()
        task.config.data.max_seq_length = self.buckets[-1]
        with_seq = [
            {k for k, a in output_avals(e).items() if a.shape[1:2] == (b,)}
            for b, e in functions.items()
        ]
        # An output has a sequence axis when it follows the bucket in every bucket.
        self._sequence_outputs = set.intersection(*with_seq) if len(functions) > 1 else set()

    @property
    def max_length(self) -> int:
        return self.buckets[-1]

    def token_counts(self, items: Sequence[Item]) -> list[int] | None:
        """Tokens each item needs (None where long inputs are windowed, not cut)."""
        return inputs.token_counts(self.name, self.task.tokenizer, items)

    def warm_up(self, max_items: int | None = None) -> None:
        """Compiles every bucket, then predicts every number of items up to `max_items`
        (default `batch_size`) once (the task's post-processing may jit per size), so that
        serving compiles nothing."""
        for bucket, exported in self._exported.items():
            params, features = argument_avals(exported)
            for rows in self.row_buckets:
                if (rows, bucket) not in self._compiled:
                    shaped = {k: jax.ShapeDtypeStruct((rows, *a.shape[1:]), a.dtype)
                              for k, a in features.items()}  # fmt: skip
                    lowered = jax.jit(exported.call).lower(params, shaped)
                    self._compiled[rows, bucket] = lowered.compile()
        for n in range(1, (max_items or self.batch_size) + 1):
            self.predict([self._sample("a")] * n)

    def _sample(self, text: str) -> Item:
        return text if "texts" in self.accepts else (text, text)

    def predict(self, items: Sequence[Item]) -> tuple[list[dict[str, Any]], int]:
        """(one row per item, in order, as `pretrain.predict` writes it; real tokens run).
        Texts and pairs may be mixed: each kind runs as its own pass."""
        rows: list[dict[str, Any] | None] = [None] * len(items)
        tokens = 0
        for kind in (str, tuple):
            where = [i for i, x in enumerate(items) if isinstance(x, kind)]
            if where:
                part, n = self._predict_alike([items[i] for i in where])
                tokens += n
                for i, row in zip(where, part):
                    rows[i] = row
        return rows, tokens

    def _predict_alike(self, items: list[Item]) -> tuple[list[dict[str, Any]], int]:
        # Shortest first: texts of like length share a batch, so few tokens are padding (a CPU
        # pays for every padded token). Rows go back to the items' order at the end.
        order = sorted(range(len(items)), key=lambda i: _characters(items[i]))
        with self._lock:
            path = os.path.join(self._scratch.name, "input")
            inputs.write_inputs(self.name, [items[i] for i in order], path)
            self.task.load_inputs(path, self.batch_size)
            data = self.task.eval_data
            gathered, tokens = [], 0
            for i in range(data.num_batches):
                batch = data.batch(i)
                tokens += int(batch["input_mask"].sum())
                gathered.append(self._run(batch))
            outputs = {
                k: np.concatenate([g[k] for g in gathered])[: data.num_examples]
                for k in gathered[0]
            }
            rows: list[dict[str, Any]] = [{}] * len(items)
            for row, i in zip(self.task.prediction_rows(outputs), order):
                rows[i] = row
            return rows, tokens

    def _run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch through the executable of the smallest buckets that hold its rows up to the
        last non-empty one (padding rows come last) and its longest row."""
        lengths = batch["input_mask"].sum(axis=1)
        used = int(np.flatnonzero(lengths)[-1]) + 1 if lengths.any() else 1
        rows = next(r for r in self.row_buckets if r >= used)
        bucket = next(b for b in self.buckets if b >= max(int(lengths.max()), 1))
        features = {k: batch[k][:rows, : spec.shape[1]] if spec.ndim > 1 else batch[k][:rows]
                    for k, spec in self._features[bucket].items()}  # fmt: skip
        out = jax.device_get(self._compiled[rows, bucket](self._params, features))
        for k, value in out.items():  # Back to the batch's shape, as the full-size call gives.
            width = [(0, 0)] * value.ndim
            width[0] = (0, len(lengths) - rows)
            if k in self._sequence_outputs:
                width[1] = (0, self.max_length - bucket)
            fill = _PAD_LOGIT if np.issubdtype(value.dtype, np.floating) else 0
            out[k] = np.pad(value, width, constant_values=fill)
        return out


def row_buckets(batch_size: int) -> list[int]:
    """Rows per model call: 1, 2, 4, ... below `batch_size`, and `batch_size`."""
    out, r = [], 1
    while r < batch_size:
        out.append(r)
        r *= 2
    return out + [batch_size]


def argument_avals(exported: jax.export.Exported) -> tuple[Any, ...]:
    """(parameter leaves, features) as shapes and dtypes."""
    return jax.tree.unflatten(exported.in_tree, exported.in_avals)[0]


def output_avals(exported: jax.export.Exported) -> dict[str, Any]:
    """Output name -> shape and dtype."""
    return jax.tree.unflatten(exported.out_tree, exported.out_avals)


def _characters(item: Item) -> int:
    """A text's length, or a pair's: a proxy for its tokens that needs no tokenizer."""
    return len(item) if isinstance(item, str) else sum(len(part) for part in item)
