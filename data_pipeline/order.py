"""Which example fills each row of a global train batch: a pure function of (seed, step, row).

Global position g = step * global_batch_size + row lies in epoch g // N and is example
`shuffle(g % N)` of the N examples, where `shuffle` is grain's `index_shuffle`, a bijection of
[0, N) keyed by (seed, epoch) and computed per index: the permutation is never materialized, so
a billion examples cost no memory. No iterator state exists: a resumed run, or a run on another
number of processes (each asking for its own rows), sees exactly the same examples. Every
step-indexed loader (pretraining, fine-tuning) orders its examples here: one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipeline.errors import DataError

# Random-stream tags. numpy pads seed sequences with zeros ([s] == [s, 0]), so without a tag the
# streams of different uses of the same seed (permutations, masks, building) would collide.
PERMUTATION, MASKS, BUILD = 1, 2, 3
_ROUNDS = 4  # Rounds of grain's Feistel-style index shuffle.


def epoch_seed(seed: int, epoch: int) -> int:
    """The 32-bit key of epoch `epoch`'s permutation."""
    return int(np.random.SeedSequence([seed, PERMUTATION, epoch]).generate_state(1)[0])


class EpochOrder:
    """Maps (step, rows) of a global batch to (example index, epoch), reshuffled every epoch."""

    def __init__(self, num_examples: int, *, seed: int, global_batch_size: int):
        if num_examples < 1:
            raise ValueError(f"num_examples={num_examples} must be positive")
        if seed < 0:
            raise ValueError(f"seed={seed} must be non-negative")
        self.num_examples = num_examples
        self.seed = seed
        self.global_batch_size = global_batch_size
        # Imported here: the shard builders import this module for its stream tags only.
        from grain.experimental import index_shuffle

        self._shuffle = index_shuffle

    def example(self, position: int, epoch: int) -> int:
        """The example at `position` of `epoch`'s order."""
        key = epoch_seed(self.seed, epoch)
        return self._shuffle(position, max_index=self.num_examples - 1, seed=key, rounds=_ROUNDS)

    def examples(self, step: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(example, epoch) of each row of global batch `step`, both int64 [len(rows)]."""
        if step < 0:
            raise ValueError(f"step={step} must be non-negative")
        positions = step * self.global_batch_size + np.asarray(rows, np.int64)
        epochs, offsets = np.divmod(positions, self.num_examples)
        keys = {int(e): epoch_seed(self.seed, int(e)) for e in np.unique(epochs)}
        last = self.num_examples - 1
        examples = np.array(
            [
                self._shuffle(int(o), max_index=last, seed=keys[int(e)], rounds=_ROUNDS)
                for o, e in zip(offsets, epochs)
            ],
            np.int64,
        )
        return examples, epochs


def check_rows(rows: np.ndarray | Sequence[int] | None, batch_size: int) -> np.ndarray:
    """`rows` as int64 indices into a batch of `batch_size` (None: all of them)."""
    if rows is None:
        return np.arange(batch_size)
    rows = np.asarray(rows, np.int64)
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= batch_size)):
        raise ValueError(f"rows must be a 1-D array of indices in [0, {batch_size})")
    return rows


class Batcher:
    """The base of every batcher (pretraining and each task): examples by index into feature
    arrays. A subclass calls `__init__` with its number of examples and defines
    `_features(examples, epochs, valid)`: the batch of example indices `examples` (int64 [B]),
    masked for `epochs` where its masks depend on the epoch; rows where not `valid` are zero
    padding of weight 0. `ShuffledBatches` and `PaddedEvalBatches` add the step -> examples rule.
    """

    def __init__(self, num_examples: int, batch_size: int, *, what: str = "examples"):
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be positive.")
        if num_examples < 1:
            raise DataError(f"no {what} to batch.")
        self.num_examples, self.batch_size = num_examples, batch_size

    @staticmethod
    def _inputs(b: int, s: int) -> dict[str, np.ndarray]:
        """The zero int32 [b, s] input_ids, input_mask and segment_ids every batch starts from."""
        return {k: np.zeros((b, s), np.int32) for k in ("input_ids", "input_mask", "segment_ids")}

    def _features(
        self, examples: np.ndarray, epochs: np.ndarray, valid: np.ndarray
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError


class TokenBatcher(Batcher):
    """A `Batcher` of rows of `max_seq_length` pieces framed by [CLS] ... [SEP]."""

    def __init__(self, num_examples: int, *, batch_size: int, max_seq_length: int, cls_id: int,
                 sep_id: int, what: str = "examples"):  # fmt: skip
        super().__init__(num_examples, batch_size, what=what)
        self.max_seq_length = max_seq_length
        self.cls_id, self.sep_id = cls_id, sep_id


class ShuffledBatches(Batcher):
    """`batch(step, rows)`: global train batch `step` in `EpochOrder`, reshuffled every epoch.
    A mixin before the task's `Batcher`: `seed` keys the order, the rest goes to the batcher."""

    def __init__(self, *args: Any, seed: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.init_order(seed)

    def init_order(self, seed: int) -> None:
        self.order = EpochOrder(self.num_examples, seed=seed, global_batch_size=self.batch_size)

    def batch(
        self, step: int, rows: np.ndarray | Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows `rows` (global row indices; default all) of global batch `step`."""
        rows = check_rows(rows, self.batch_size)
        examples, epochs = self.order.examples(step, rows)
        return self._features(examples, epochs, np.ones(len(rows), bool))


class PaddedEvalBatches(Batcher):
    """`batch(i, rows)`: the eval set in order, epoch 0; the last batch is padded with rows of
    weight 0 (`valid` False). A mixin, as `ShuffledBatches`."""

    @property
    def num_batches(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def batch(
        self, i: int, rows: np.ndarray | Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows `rows` (indices within the batch; default all) of eval batch `i`."""
        if not 0 <= i < self.num_batches:
            raise ValueError(f"eval batch {i} is out of range [0, {self.num_batches}).")
        examples = i * self.batch_size + check_rows(rows, self.batch_size)
        valid = examples < self.num_examples
        return self._features(np.where(valid, examples, 0), np.zeros_like(examples), valid)
