"""Which example fills each row of a global train batch: a pure function of (seed, step, row).

Global position g = step * global_batch_size + row lies in epoch g // N and is example
`permutation(seed, epoch)[g % N]` of the N examples, with
`permutation(seed, epoch) = np.random.default_rng([seed, PERMUTATION, epoch]).permutation(N)`.
No iterator state exists: a resumed run, or a run on another number of processes (each asking
for its own rows), sees exactly the same examples. Every step-indexed loader (pretraining,
fine-tuning) orders its examples here, so there is one rule.
"""

from __future__ import annotations

import numpy as np

# Random-stream tags. numpy pads seed sequences with zeros ([s] == [s, 0]), so without a tag the
# epoch-0 permutation would draw the stream of anything else seeded with [seed] alone, and
# masks (keyed by [seed, example, epoch]) would collide with permutations of other epochs.
PERMUTATION, MASKS = 1, 2


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
        self._cached: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def permutation(self, epoch: int) -> np.ndarray:
        """int64 [N]: the order of the examples in `epoch` (the latest one is cached)."""
        cached_epoch, order = self._cached  # One read: safe against a racing write.
        if cached_epoch != epoch:
            rng = np.random.default_rng([self.seed, PERMUTATION, epoch])
            order = rng.permutation(self.num_examples)
            self._cached = (epoch, order)
        return order

    def examples(self, step: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(example, epoch) of each row of global batch `step`, both int64 [len(rows)]."""
        if step < 0:
            raise ValueError(f"step={step} must be non-negative")
        positions = step * self.global_batch_size + np.asarray(rows, np.int64)
        epochs, offsets = np.divmod(positions, self.num_examples)
        examples = np.empty_like(positions)
        for epoch in np.unique(epochs):  # A batch spans at most a few epochs.
            in_epoch = epochs == epoch
            examples[in_epoch] = self.permutation(int(epoch))[offsets[in_epoch]]
        return examples, epochs


def check_rows(rows: np.ndarray | None, batch_size: int) -> np.ndarray:
    """`rows` as int64 indices into a batch of `batch_size` (None: all of them)."""
    if rows is None:
        return np.arange(batch_size)
    rows = np.asarray(rows, np.int64)
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= batch_size)):
        raise ValueError(f"rows must be a 1-D array of indices in [0, {batch_size})")
    return rows
