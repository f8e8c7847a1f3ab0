"""Step -> this process's rows of the global batch, as numpy; no iterator state.

Train order: `order.EpochOrder` maps each row of global batch `step` to an instance of the store
and an epoch; its masks come from `np.random.default_rng([seed, MASKS, example, epoch])`. So a
batch is a pure function of (seed, step, row): resume is exact, and any number of processes,
each building only its rows, together build the same global batch.

Eval: a fixed set (fixed seed, epoch 0 masks) read in order in batches; the last batch is padded
with all-zero rows whose `masked_lm_weights` and `next_sentence_weights` are 0.

`build_datasets` turns `config.data` into the two loaders, caching the instance stores on disk.
"""

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Sequence

import numpy as np
from absl import logging

from data_pipeline import documents, files, instances, masking, pretokenize
from data_pipeline.errors import ConfigError, DataError
from data_pipeline.order import MASKS, EpochOrder, check_rows

EVAL_SEED = 1234  # The eval set and its masks do not depend on the run's seed.


def check_masking_args(
    max_seq_length: int, max_predictions_per_seq: int, masked_lm_prob: float
) -> None:
    """ValueError unless the sequence and masking sizes are usable."""
    if max_seq_length < 8:
        raise ConfigError(f"max_seq_length={max_seq_length} is too short: use at least 8")
    if not 1 <= max_predictions_per_seq <= max_seq_length - 3:
        raise ConfigError(
            f"max_predictions_per_seq={max_predictions_per_seq} must be in [1, "
            f"max_seq_length - 3 = {max_seq_length - 3}] (the positions A and B can fill)"
        )
    if not 0.0 <= masked_lm_prob <= 1.0:
        raise ConfigError(f"masked_lm_prob={masked_lm_prob} must be a probability in [0, 1]")


class _Batcher:
    """Masks store examples into preallocated, zero-padded batch arrays."""

    def __init__(
        self,
        store: instances.InstanceStore,
        vocab: masking.MaskingVocab,
        *,
        seed: int,
        batch_size: int,
        max_seq_length: int,
        max_predictions_per_seq: int,
        masked_lm_prob: float,
        whole_word_masking: bool,
    ):
        check_masking_args(max_seq_length, max_predictions_per_seq, masked_lm_prob)
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be positive")
        if seed < 0:
            raise ValueError(f"seed={seed} must be non-negative")
        if store.max_seq_length > max_seq_length:
            raise DataError(
                f"the instance store was built for max_seq_length={store.max_seq_length}, "
                f"longer than {max_seq_length}: rebuild it"
            )
        if len(store) == 0:
            raise DataError("the instance store is empty")
        self.store = store
        self.vocab = vocab
        self.seed = seed
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.max_predictions_per_seq = max_predictions_per_seq
        self.masked_lm_prob = masked_lm_prob
        self.is_word_start = vocab.is_word_start if whole_word_masking else None

    @property
    def num_examples(self) -> int:
        return len(self.store)

    def _features(
        self, examples: np.ndarray, epochs: np.ndarray, valid: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The batch of `examples` (masked for `epochs`); rows where not `valid` stay zero."""
        b, s, p = len(examples), self.max_seq_length, self.max_predictions_per_seq
        batch = {
            "input_ids": np.zeros((b, s), np.int32),
            "input_mask": np.zeros((b, s), np.int32),
            "segment_ids": np.zeros((b, s), np.int32),
            "masked_lm_positions": np.zeros((b, p), np.int32),
            "masked_lm_ids": np.zeros((b, p), np.int32),
            "masked_lm_weights": np.zeros((b, p), np.float32),
            "next_sentence_labels": np.zeros((b,), np.int32),
            "next_sentence_weights": valid.astype(np.float32),
        }
        v = self.vocab
        for r in np.flatnonzero(valid):
            example = int(examples[r])
            tokens_a, tokens_b, is_random_next = self.store[example]
            ids, len_first = masking.pack_pair(tokens_a, tokens_b, cls_id=v.cls_id, sep_id=v.sep_id)
            masked, positions, original = masking.mask_sequence(
                ids,
                rng=np.random.default_rng([self.seed, MASKS, example, int(epochs[r])]),
                max_predictions_per_seq=p,
                masked_lm_prob=self.masked_lm_prob,
                vocab_size=v.vocab_size,
                mask_id=v.mask_id,
                special_ids=v.special_ids,
                is_word_start=self.is_word_start,
            )
            n, k = len(ids), len(positions)
            batch["input_ids"][r, :n] = masked
            batch["input_mask"][r, :n] = 1
            batch["segment_ids"][r, len_first:n] = 1
            batch["masked_lm_positions"][r, :k] = positions
            batch["masked_lm_ids"][r, :k] = original
            batch["masked_lm_weights"][r, :k] = 1.0
            batch["next_sentence_labels"][r] = is_random_next
        return batch


class PretrainingLoader(_Batcher):
    """Global train batch `step` (or some of its rows), reshuffled every epoch."""

    def __init__(
        self,
        store: instances.InstanceStore,
        vocab: masking.MaskingVocab,
        *,
        seed: int,
        global_batch_size: int,
        max_seq_length: int,
        max_predictions_per_seq: int,
        masked_lm_prob: float,
        whole_word_masking: bool,
    ):
        super().__init__(
            store,
            vocab,
            seed=seed,
            batch_size=global_batch_size,
            max_seq_length=max_seq_length,
            max_predictions_per_seq=max_predictions_per_seq,
            masked_lm_prob=masked_lm_prob,
            whole_word_masking=whole_word_masking,
        )
        self.global_batch_size = global_batch_size
        self.order = EpochOrder(len(store), seed=seed, global_batch_size=global_batch_size)

    def batch(
        self, step: int, rows: np.ndarray | Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows `rows` (global row indices; default all) of global batch `step`.

        Features and dtypes are the Batch table of docs/architecture.md, with B = len(rows).
        """
        rows = check_rows(rows, self.batch_size)
        examples, epochs = self.order.examples(step, rows)
        return self._features(examples, epochs, np.ones(len(rows), bool))


class EvalLoader(_Batcher):
    """A fixed eval set read in order; the last batch is padded with zero-weight rows."""

    def __init__(
        self,
        store: instances.InstanceStore,
        vocab: masking.MaskingVocab,
        *,
        batch_size: int,
        max_seq_length: int,
        max_predictions_per_seq: int,
        masked_lm_prob: float,
        whole_word_masking: bool,
        seed: int = EVAL_SEED,
    ):
        super().__init__(
            store,
            vocab,
            seed=seed,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            max_predictions_per_seq=max_predictions_per_seq,
            masked_lm_prob=masked_lm_prob,
            whole_word_masking=whole_word_masking,
        )

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def batch(
        self, i: int, rows: np.ndarray | Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows `rows` (indices within the batch; default all) of eval batch `i`."""
        if not 0 <= i < self.num_batches:
            raise ValueError(f"eval batch {i} is out of range [0, {self.num_batches})")
        rows = check_rows(rows, self.batch_size)
        examples = i * self.batch_size + rows
        valid = examples < self.num_examples
        return self._features(examples, np.zeros_like(examples), valid)


def _cache_key(spec: str, text_feature: str, tokenizer_fingerprint: str, params: dict) -> str:
    """Hash of everything an instance store depends on; any change gives a new cache file."""
    if documents.is_tfds_spec(spec):
        source = [spec.strip(), text_feature]
    elif pretokenize.is_pretokenized(spec):
        source = [pretokenize.fingerprint(spec)]
    else:
        source = [
            (os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns)
            for p in documents.resolve_files(spec)
        ]
    key = {
        "source": source,
        "tokenizer": tokenizer_fingerprint,
        "format": instances.FORMAT_VERSION,
        **params,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def load_or_build_store(
    spec: str,
    tokenizer,
    *,
    seed: int,
    max_seq_length: int,
    short_seq_prob: float,
    random_next_prob: float,
    dupe_factor: int,
    text_feature: str = "text",
    cache_dir: str | None = None,
) -> instances.InstanceStore:
    """Reads, tokenizes and builds the instances of `spec`, or loads them from `cache_dir`.

    `spec` may also be a directory written by `data_pipeline.pretokenize`: its shards are read
    instead of tokenizing text (same documents, same instances).

    The cache file is keyed by the files (paths, sizes, mtimes), the tokenizer and every building
    parameter, and written atomically, so concurrent processes may share `cache_dir`.
    """
    params = dict(
        seed=seed,
        max_seq_length=max_seq_length,
        short_seq_prob=short_seq_prob,
        random_next_prob=random_next_prob,
        dupe_factor=dupe_factor,
    )
    path = None
    if cache_dir:
        key = _cache_key(spec, text_feature, tokenizer.fingerprint, params)
        path = os.path.join(cache_dir, f"instances-{key}.npz")
        if os.path.exists(path):
            try:
                store = instances.InstanceStore.load(path)
                logging.info("Loaded %d instances of %s from %s", len(store), spec, path)
                return store
            except ValueError as e:
                logging.warning("Rebuilding the instance cache: %s", e)

    start = time.perf_counter()
    if pretokenize.is_pretokenized(spec):  # A data_pipeline.pretokenize output directory.
        docs = pretokenize.read_documents(spec, tokenizer)
    else:
        docs = instances.tokenize_documents(
            documents.iter_documents(spec, text_feature=text_feature), tokenizer
        )
    store = instances.build_instance_store(docs, **params)
    logging.info(
        "Built %d instances from %d documents of %s in %.1f s",
        len(store),
        len(docs),
        spec,
        time.perf_counter() - start,
    )
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        buffer = io.BytesIO()
        store.save(buffer)
        files.write_bytes(path, buffer.getvalue())
    return store


def build_datasets(
    data_config,
    tokenizer,
    seed: int,
    *,
    global_batch_size: int,
    eval_batch_size: int,
    cache_dir: str | None = None,
) -> tuple[PretrainingLoader, EvalLoader | None]:
    """The train loader and (when `data_config.eval_files` is set) the eval loader.

    Args:
      data_config: `config.data` (train_files, eval_files, tfds_text_feature, max_seq_length,
        max_predictions_per_seq, masked_lm_prob, whole_word_masking, short_seq_prob,
        random_next_prob, dupe_factor).
      tokenizer: a `data_pipeline.vocab.Tokenizer`.
      seed: the run's seed: train instances, order and masks. Eval uses `EVAL_SEED`.
      global_batch_size, eval_batch_size: sequences per global train / eval batch.
      cache_dir: where instance stores are cached across restarts (None: no cache).
    """
    c = data_config
    if not c.train_files.strip():
        raise ConfigError("data.train_files is empty: set it to text file globs or tfds:NAME")
    check_masking_args(c.max_seq_length, c.max_predictions_per_seq, c.masked_lm_prob)
    for name in ("short_seq_prob", "random_next_prob"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise ConfigError(f"data.{name}={getattr(c, name)} must be a probability in [0, 1]")
    if c.dupe_factor < 1:
        raise ConfigError(f"data.dupe_factor={c.dupe_factor} must be at least 1")
    if global_batch_size < 1 or eval_batch_size < 1:
        raise ConfigError(
            f"batch sizes must be positive (global_batch_size={global_batch_size}, "
            f"eval_batch_size={eval_batch_size})"
        )

    vocab = masking.MaskingVocab.from_tokenizer(tokenizer)
    store_args = dict(
        max_seq_length=c.max_seq_length,
        short_seq_prob=c.short_seq_prob,
        random_next_prob=c.random_next_prob,
        text_feature=c.tfds_text_feature,
        cache_dir=cache_dir,
    )
    loader_args = dict(
        max_seq_length=c.max_seq_length,
        max_predictions_per_seq=c.max_predictions_per_seq,
        masked_lm_prob=c.masked_lm_prob,
        whole_word_masking=c.whole_word_masking,
    )
    train_store = load_or_build_store(
        c.train_files, tokenizer, seed=seed, dupe_factor=c.dupe_factor, **store_args
    )
    train = PretrainingLoader(
        train_store, vocab, seed=seed, global_batch_size=global_batch_size, **loader_args
    )
    if not c.eval_files.strip():
        return train, None
    # One pass: the eval set is fixed, and repeats would only weight some documents twice.
    eval_store = load_or_build_store(
        c.eval_files, tokenizer, seed=EVAL_SEED, dupe_factor=1, **store_args
    )
    return train, EvalLoader(eval_store, vocab, batch_size=eval_batch_size, **loader_args)
