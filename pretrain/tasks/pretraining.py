"""Pretraining as a task of the one loop: masked LM, with next-sentence prediction or not.

`data.objective='nsp'` (BERT): sentence pairs, loss `mlm_sum / mlm_weight + nsp_sum /
nsp_weight`, both weights counted over the whole global batch (masked positions; real examples).
`data.objective='packed'` (ModernBERT's recipe): full rows of concatenated documents, attention
within each document, masked LM only (`mlm_sum / mlm_weight`); the rows' metrics have no NSP
fields. Data: built into shards (`data_pipeline/shards.py`), read by random access with dynamic
masks (`data_pipeline/loader.py`); the batch of step `s` is a pure function of (seed, s).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from data_pipeline import loader as data_loader
from pretrain.compute import flops
from pretrain.models.config import EncoderConfig
from pretrain.models.heads import PreTrainingModel
from pretrain.training import losses, validation
from pretrain.training.task import Batch, EvalData, Sums, Task, TrainData
from pretrain.training.workdir import data_cache_dir, prepare_tokenizer


class CappedEval:
    """The first `max_batches` batches of an eval set (0: all of them)."""

    def __init__(self, data: EvalData, max_batches: int):
        self.data = data
        self.batch_size = data.batch_size
        self.num_batches = (
            data.num_batches if max_batches <= 0 else min(max_batches, data.num_batches)
        )
        self.num_examples = min(data.num_examples, self.num_batches * data.batch_size)

    def batch(self, i: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return self.data.batch(i, rows=rows)


class PretrainingTask(Task):
    """Masked LM and next-sentence prediction on NSP instances."""

    kind = "pretraining"

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        vocab_size: int,
        train_data: TrainData | None = None,
        eval_data: EvalData | None = None,
    ):
        """The task without data (`train_data` None) serves the benchmark's synthetic batches."""
        self.config = config
        self.nsp = config.data.get("objective", "nsp") == "nsp"
        self.model_config = EncoderConfig.from_config(
            config.model, vocab_size=vocab_size, dtype=config.dtype
        )
        self.seq_len = config.data.max_seq_length
        self.train_data = train_data
        self.eval_data = eval_data

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        validation.check_pretraining(config)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, workdir: epath.Path) -> PretrainingTask:
        """The tokenizer (trained into WORKDIR on first start) and the built train and eval data
        (text is built into WORKDIR's data cache on first start; a built directory is read)."""
        tokenizer = prepare_tokenizer(config.data, workdir)
        train, evals = data_loader.build_datasets(
            config.data,
            tokenizer,
            seed=config.seed,
            global_batch_size=config.global_batch_size,
            eval_batch_size=config.eval_batch_size,
            cache_dir=data_cache_dir(workdir),
        )
        capped = None if evals is None else CappedEval(evals, config.max_eval_batches)
        return cls(config, tokenizer.vocab_size, train, capped)

    def make_model(self, rngs: nnx.Rngs) -> PreTrainingModel:
        return PreTrainingModel(self.model_config, with_nsp=self.nsp, rngs=rngs)

    def loss_weights(self, batch: Batch) -> Sums:
        weights = {"mlm": jnp.maximum(batch["masked_lm_weights"].sum(), 1.0)}
        if self.nsp:
            weights["nsp"] = jnp.maximum(batch["next_sentence_weights"].sum(), 1.0)
        return weights

    def _logits(
        self, model: PreTrainingModel, batch: Batch, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, jax.Array | None]:
        """(MLM logits [B, P, V], NSP logits [B, 2] or None) of `model` on the batch."""
        return model(
            batch["input_ids"],
            batch["input_mask"],
            batch["segment_ids"],
            batch["masked_lm_positions"],
            document_ids=batch.get("document_ids"),
            positions=batch.get("positions"),
            deterministic=rngs is None,
            rngs=rngs,
        )

    def _loss_terms(
        self, mlm_logits: jax.Array, nsp_logits: jax.Array | None, batch: Batch
    ) -> Sums:
        if not self.nsp:
            return losses.mlm_loss_terms(mlm_logits, batch)
        return losses.pretraining_loss_terms(mlm_logits, nsp_logits, batch)

    def _terms(self, model: PreTrainingModel, batch: Batch, rngs: nnx.Rngs | None) -> Sums:
        return self._loss_terms(*self._logits(model, batch, rngs), batch)

    def loss_sums(self, model: PreTrainingModel, batch: Batch, rngs: nnx.Rngs | None) -> Sums:
        return self._terms(model, batch, rngs)

    def metrics(self, sums: Sums, weights: Sums) -> dict[str, jax.Array]:
        mlm_loss = sums["mlm_loss_sum"] / weights["mlm"]
        mlm_accuracy = sums["mlm_correct"] / weights["mlm"]
        if not self.nsp:
            return {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_accuracy": mlm_accuracy}
        nsp_loss = sums["nsp_loss_sum"] / weights["nsp"]
        return {
            "loss": mlm_loss + nsp_loss,
            "mlm_loss": mlm_loss,
            "nsp_loss": nsp_loss,
            "mlm_accuracy": mlm_accuracy,
            "nsp_accuracy": sums["nsp_correct"] / weights["nsp"],
        }

    def eval_step(self, model: PreTrainingModel, batch: Batch) -> tuple[Sums, dict]:
        """Sums (never means) over the batch, so padded batches and many hosts add up exactly."""
        return self._terms(model, batch, None), {}

    def eval_metrics(self, sums: dict[str, Any], outputs: dict[str, np.ndarray]) -> dict:
        mlm_w = max(float(sums["mlm_weight"]), 1.0)
        row = {
            "eval_mlm_loss": float(sums["mlm_loss_sum"]) / mlm_w,
            "eval_mlm_accuracy": float(sums["mlm_correct"]) / mlm_w,
        }
        if self.nsp:
            nsp_w = max(float(sums["nsp_weight"]), 1.0)
            row["eval_nsp_loss"] = float(sums["nsp_loss_sum"]) / nsp_w
            row["eval_nsp_accuracy"] = float(sums["nsp_correct"]) / nsp_w
        return row

    def flops_per_token(self) -> float:
        return flops.config_train_flops(self.config, self.model_config.vocab_size).per_token

    def checkpoint_record(self) -> dict[str, Any]:
        return self.config.to_dict()
