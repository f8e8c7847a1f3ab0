"""Pretraining batches: step -> this process's rows of the global batch, as numpy.

The examples are the records of a built directory (`records.BuiltData`): NSP instances or packed
rows. `order.EpochOrder` maps each row of global batch `step` to a record and an epoch; its masks
come from `np.random.default_rng([seed, MASKS, example, epoch])` (dynamic masking). So a batch is
a pure function of (seed, step, row): resume is exact, and any number of processes, each reading
only the records of its rows, together build the same global batch.

Eval: a fixed set (fixed seed, epoch 0 masks, masking at `EVAL_MASKED_LM_PROB` whatever the
training rate, so eval numbers compare across recipes) read in order in batches; the last batch
is padded with all-zero rows of weight 0.

Features (B rows, S = max_seq_length, P = max_predictions_per_seq; docs/architecture.md):

    both     input_ids, input_mask, segment_ids [B, S] int32; masked_lm_positions,
             masked_lm_ids [B, P] int32; masked_lm_weights [B, P] float32
    nsp      next_sentence_labels [B] int32, next_sentence_weights [B] float32
    packed   document_ids [B, S] int32 (1, 2, ... per piece of document; 0 for padding) and
             positions [B, S] int32 (restarting at each piece); segment_ids are all 0

`prepare_data` turns `config.data` into a built directory: the given one, or text built into the
run's cache on first start.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipeline import integrity, masking, records, shards
from data_pipeline.errors import ConfigError, DataError
from data_pipeline.order import MASKS, Batcher, PaddedEvalBatches, ShuffledBatches

EVAL_SEED = 1234  # The eval set and its masks do not depend on the run's seed.
EVAL_MASKED_LM_PROB = 0.15  # BERT's rate: eval numbers of every recipe compare.
UNIT_BYTES = 64 << 20  # Input bytes per shard when a run builds its own data.


def check_masking_args(
    max_seq_length: int, max_predictions_per_seq: int, masked_lm_prob: float
) -> None:
    """ConfigError unless the sequence and masking sizes are usable."""
    if max_seq_length < 8:
        raise ConfigError(f"max_seq_length={max_seq_length} is too short: use at least 8")
    if not 1 <= max_predictions_per_seq <= max_seq_length - 3:
        raise ConfigError(
            f"max_predictions_per_seq={max_predictions_per_seq} must be in [1, "
            f"max_seq_length - 3 = {max_seq_length - 3}] (the positions A and B can fill)"
        )
    if not 0.0 <= masked_lm_prob <= 1.0:
        raise ConfigError(f"masked_lm_prob={masked_lm_prob} must be a probability in [0, 1]")


class _Batcher(Batcher):
    """Masks records of a built directory into preallocated, zero-padded batch arrays."""

    def __init__(
        self,
        data: records.BuiltData,
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
        super().__init__(len(data), batch_size, what="records")
        built = int(data.params["max_seq_length"])
        fits = built == max_seq_length if data.objective == "packed" else built <= max_seq_length
        if not fits:
            raise DataError(
                f"{data.directory} was built for max_seq_length={built}, which does not fit "
                f"data.max_seq_length={max_seq_length}: rebuild it, or set that length"
            )
        self.data, self.vocab, self.seed = data, vocab, seed
        self.max_seq_length = max_seq_length
        self.max_predictions_per_seq = max_predictions_per_seq
        self.masked_lm_prob = masked_lm_prob
        self.is_word_start = vocab.is_word_start if whole_word_masking else None

    def _features(
        self, examples: np.ndarray, epochs: np.ndarray, valid: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The batch of `examples` (masked for `epochs`); rows where not `valid` stay zero."""
        b, s, p = len(examples), self.max_seq_length, self.max_predictions_per_seq
        batch = {
            **self._inputs(b, s),
            "masked_lm_positions": np.zeros((b, p), np.int32),
            "masked_lm_ids": np.zeros((b, p), np.int32),
            "masked_lm_weights": np.zeros((b, p), np.float32),
        }
        packed = self.data.objective == "packed"
        if packed:
            batch["document_ids"] = np.zeros((b, s), np.int32)
            batch["positions"] = np.zeros((b, s), np.int32)
        else:
            batch["next_sentence_labels"] = np.zeros((b,), np.int32)
            batch["next_sentence_weights"] = valid.astype(np.float32)
        rows = np.flatnonzero(valid)
        for r, record in zip(rows, self.data.read(examples[rows])):
            ids = self._row(batch, r, record, packed)
            self._mask(batch, r, ids, int(examples[r]), int(epochs[r]))
        return batch

    def _row(self, batch: dict, r: int, record: bytes, packed: bool) -> np.ndarray:
        """Writes row r's unmasked layout; returns its token ids."""
        v = self.vocab
        if packed:
            ids, lengths = records.decode_packed(record)
            n = len(ids)
            batch["document_ids"][r, :n] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
            batch["positions"][r, :n] = np.concatenate([np.arange(k) for k in lengths])
        else:
            tokens_a, tokens_b, is_random_next = records.decode_nsp(record)
            ids, len_first = masking.pack_pair(tokens_a, tokens_b, cls_id=v.cls_id, sep_id=v.sep_id)
            n = len(ids)
            batch["segment_ids"][r, len_first:n] = 1
            batch["next_sentence_labels"][r] = is_random_next
        batch["input_mask"][r, :n] = 1
        return ids

    def _mask(self, batch: dict, r: int, ids: np.ndarray, example: int, epoch: int) -> None:
        v = self.vocab
        masked, positions, original = masking.mask_sequence(
            ids,
            rng=np.random.default_rng([self.seed, MASKS, example, epoch]),
            max_predictions_per_seq=self.max_predictions_per_seq,
            masked_lm_prob=self.masked_lm_prob,
            vocab_size=v.vocab_size,
            mask_id=v.mask_id,
            special_ids=v.special_ids,
            is_word_start=self.is_word_start,
        )
        k = len(positions)
        batch["input_ids"][r, : len(ids)] = masked
        batch["masked_lm_positions"][r, :k] = positions
        batch["masked_lm_ids"][r, :k] = original
        batch["masked_lm_weights"][r, :k] = 1.0


class PretrainingLoader(ShuffledBatches, _Batcher):
    """Global train batch `step` (or some of its rows), reshuffled every epoch."""

    def __init__(self, data: records.BuiltData, vocab: masking.MaskingVocab, *, seed: int,
                 global_batch_size: int, **kwargs):  # fmt: skip
        # The seed keys both the order and the masks.
        _Batcher.__init__(self, data, vocab, seed=seed, batch_size=global_batch_size, **kwargs)
        self.init_order(seed)


class EvalLoader(PaddedEvalBatches, _Batcher):
    """A fixed eval set read in order; the last batch is padded with zero-weight rows."""

    def __init__(self, data: records.BuiltData, vocab: masking.MaskingVocab, **kwargs):
        kwargs.setdefault("seed", EVAL_SEED)
        super().__init__(data, vocab, **kwargs)


def recipe(data_config: Mapping[str, Any], seed: int) -> shards.Recipe:
    """The build recipe of `config.data` (what its shards depend on); `build.py` passes its
    flags under the same names."""
    c = data_config
    for name in ("short_seq_prob", "random_next_prob"):
        if not 0.0 <= c[name] <= 1.0:
            raise ConfigError(f"data.{name}={c[name]} must be a probability in [0, 1]")
    fields = ("max_seq_length", "short_seq_prob", "random_next_prob", "dupe_factor")
    return shards.Recipe(
        objective=c.get("objective", "nsp"),
        seed=seed,
        text_feature=c["tfds_text_feature"],
        **{name: c[name] for name in fields},
    )


def prepare_data(spec: str, tokenizer, build: shards.Recipe, cache_dir: str) -> str:
    """The built directory of `spec`: `spec` itself when it is one (checked against the run),
    else `spec` (text globs or tfds:NAME) built into `cache_dir` on first use (resumed if
    interrupted). Safe to call from every process: builds into one host's cache take turns."""
    if records.is_built_dir(spec):
        manifest = records.read_manifest(spec.strip())
        if manifest["tokenizer_fingerprint"] != tokenizer.fingerprint:
            raise DataError(
                f"{spec} was built with another tokenizer: set data.tokenizer_model to the "
                f"one in it (or leave it empty to use it)"
            )
        if manifest["objective"] != build.objective:
            raise DataError(
                f"{spec} holds {manifest['objective']} examples, but data.objective="
                f"{build.objective!r}: build it with --objective={build.objective}"
            )
        return spec.strip()
    key = shards.cache_key(spec, tokenizer, build, UNIT_BYTES)
    directory = os.path.join(cache_dir, f"built-{key}")
    os.makedirs(cache_dir, exist_ok=True)
    # Processes sharing this host's cache take turns: the first builds, the next find it done.
    with open(os.path.join(cache_dir, f".lock-{key}"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shards.build_locally(spec, directory, tokenizer.model_path, build, UNIT_BYTES)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return directory


def loaders(
    data_config,
    tokenizer,
    *,
    seed: int,
    global_batch_size: int,
    eval_batch_size: int,
    train_dir: str,
    eval_dir: str | None,
) -> tuple[PretrainingLoader, EvalLoader | None]:
    """The train loader and (with an eval directory) the eval loader over built directories."""
    c = data_config
    check_masking_args(c.max_seq_length, c.max_predictions_per_seq, c.masked_lm_prob)
    vocab = masking.MaskingVocab.from_tokenizer(tokenizer)
    sizes = dict(max_seq_length=c.max_seq_length, max_predictions_per_seq=c.max_predictions_per_seq,
                 whole_word_masking=c.whole_word_masking)  # fmt: skip
    train = PretrainingLoader(
        records.BuiltData(train_dir), vocab, seed=seed, global_batch_size=global_batch_size,
        masked_lm_prob=c.masked_lm_prob, **sizes,
    )  # fmt: skip
    if eval_dir is None:
        return train, None
    evals = EvalLoader(
        records.BuiltData(eval_dir), vocab, batch_size=eval_batch_size,
        masked_lm_prob=EVAL_MASKED_LM_PROB, **sizes,
    )  # fmt: skip
    return train, evals


def build_datasets(
    data_config,
    tokenizer,
    seed: int,
    *,
    global_batch_size: int,
    eval_batch_size: int,
    cache_dir: str,
) -> tuple[PretrainingLoader, EvalLoader | None]:
    """The train loader and (when `data_config.eval_files` is set) the eval loader, building
    text into `cache_dir` on first use (`prepare_data`)."""
    if not data_config.train_files.strip():
        raise ConfigError("data.train_files is empty: set it to text file globs or tfds:NAME")
    build = recipe(data_config, seed)
    train_dir = prepare_data(data_config.train_files, tokenizer, build, cache_dir)
    eval_dir = None
    if data_config.eval_files.strip():
        # The eval set is fixed: its own seed, one pass (repeats would weigh some examples twice).
        fixed = dataclasses.replace(build, seed=EVAL_SEED, dupe_factor=1)
        eval_dir = prepare_data(data_config.eval_files, tokenizer, fixed, cache_dir)
    if data_config.get("verify_shards", False):  # Damage is one error now, not at some step.
        for directory in filter(None, (train_dir, eval_dir)):
            integrity.require_sound(directory)
    return loaders(
        data_config,
        tokenizer,
        seed=seed,
        global_batch_size=global_batch_size,
        eval_batch_size=eval_batch_size,
        train_dir=train_dir,
        eval_dir=eval_dir,
    )
