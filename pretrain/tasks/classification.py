"""Sequence classification (and regression) as a fine-tuning task of the one loop.

Data: labelled TSV rows or a TFDS split (`data_pipeline/tasks/classification.py`), the label set
from the training data, saved in WORKDIR/labels.json. Model: the encoder's pooled output, dropout
and a linear layer (`heads.SequenceClassifier`). Loss: cross-entropy (or squared error for
`config.task='regression'`) summed over real examples, divided by their count in the global
batch. Eval: accuracy and macro-F1 (plus F1 and MCC for two classes), or Pearson/Spearman.
WORKDIR/best keeps the checkpoint with the best `config.best_metric`; WORKDIR/predictions.tsv
holds the eval predictions at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from data_pipeline import files
from data_pipeline.tasks import classification as data
from data_pipeline.tasks.examples import read_examples, skip_header
from pretrain.models.heads import SequenceClassifier
from pretrain.tasks import classification_metrics, reporting
from pretrain.tasks.finetuning import FinetuningTask, load_labels, resolve_model_config, save_labels
from pretrain.training.errors import ConfigError
from pretrain.training.task import Batch, Sums

PREDICTIONS_FILE = "predictions.tsv"
CONFUSION_FILE = "confusion_matrix.png"


def best_metric(config: ml_collections.ConfigDict, labels: list[str]) -> str:
    """config.best_metric, or the task's default; ConfigError if the task does not report it."""
    if not labels:
        allowed = ("eval_pearson", "eval_spearman")
    else:
        allowed = ("eval_accuracy", "eval_macro_f1") + (
            ("eval_f1", "eval_mcc") if len(labels) == 2 else ()
        )
    name = config.best_metric or allowed[0]
    if name not in allowed:
        raise ConfigError(
            f"config.best_metric={name!r} is not reported for this task: use one of {allowed}."
        )
    return name


class ClassificationTask(FinetuningTask):
    """Labels (or a score) per sequence or sequence pair."""

    tasks = ("classification", "regression")
    export_head = "classification"
    train_format = "a TSV file (label<TAB>text) or tfds:NAME"

    def __init__(self, config, model_config, pretrained_step, dataset: data.ClassificationData):
        super().__init__(config, model_config, pretrained_step, dataset.train, dataset.eval)
        self.dataset = dataset
        self.labels = dataset.labels  # [] for regression.
        self.regression = not self.labels
        self.best_metric = best_metric(config, self.labels)

    @classmethod
    def for_model(cls, config, model_config, labels: list[str]) -> ClassificationTask:
        return cls(config, model_config, None, data.ClassificationData(None, None, labels, None))

    def export_labels(self) -> list[str]:
        return list(self.labels)  # [] for regression: one output, 'regression' problem type.

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, workdir: epath.Path) -> ClassificationTask:
        tokenizer, step, pretrained = cls.prepare(config, workdir)
        dataset = data.build_datasets(
            config.data,
            tokenizer,
            task=config.task,
            seed=config.seed,
            global_batch_size=config.global_batch_size,
            eval_batch_size=config.eval_batch_size,
            labels=load_labels(workdir, config.task),
        )
        save_labels(workdir, config.task, dataset.labels)
        model_config = resolve_model_config(config, tokenizer.vocab_size, pretrained)
        task = cls(config, model_config, step, dataset)
        task.tokenizer = tokenizer
        return task

    def make_model(self, rngs: nnx.Rngs) -> SequenceClassifier:
        num_outputs = len(self.labels) or 1
        dropout = self.config.classifier_dropout
        model = SequenceClassifier(self.model_config, num_outputs, dropout_rate=dropout, rngs=rngs)
        return self.adapt(model, rngs)

    def forward(self, model: SequenceClassifier, batch: Batch, rngs) -> jax.Array:
        """[B, C] float32 (C = 1 for regression)."""
        return model.on_batch(batch, rngs)

    def hard_sums(self, outputs: jax.Array, batch: Batch) -> Sums:
        """Sums over the batch of the weighted loss (cross-entropy or squared error) and hits."""
        weights = batch["example_weight"]  # [B]
        if self.regression:
            error = outputs[:, 0] - batch["label"]
            # where(): a weight-0 padding row contributes 0 even if its output is not finite.
            return {"loss_sum": jnp.sum(jnp.where(weights > 0, weights * error**2, 0.0))}
        log_probs = jax.nn.log_softmax(outputs, axis=-1)  # [B, C]
        label_log_probs = jnp.take_along_axis(log_probs, batch["label"][:, None], axis=-1)[:, 0]
        hits = (jnp.argmax(outputs, axis=-1) == batch["label"]).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(jnp.where(weights > 0, -label_log_probs * weights, 0.0)),
            "correct": jnp.sum(hits * weights),
        }

    def loss_weights(self, batch: Batch) -> Sums:
        return {"examples": jnp.maximum(batch["example_weight"].sum(), 1.0)}

    def metrics(self, sums: Sums, weights: Sums) -> dict[str, jax.Array]:
        out = {"loss": sums["loss_sum"] / weights["examples"]}
        if not self.regression:
            out["accuracy"] = sums["correct"] / weights["examples"]
        return out

    def eval_step(self, model: SequenceClassifier, batch: Batch) -> tuple[Sums, dict]:
        outputs = self.forward(model, batch, None)
        return {"loss_sum": self.hard_sums(outputs, batch)["loss_sum"]}, {"logits": outputs}

    def eval_metrics(self, sums: dict[str, Any], outputs: dict[str, np.ndarray]) -> dict:
        logits = outputs["logits"]
        gold = self.eval_data.data.labels
        row = {"eval_loss": float(sums["loss_sum"]) / len(logits)}
        if self.labels:
            metrics = classification_metrics.classification_metrics(gold, logits, len(self.labels))
        else:
            metrics = classification_metrics.regression_metrics(gold, logits[:, 0])
        row.update({f"eval_{k}": v for k, v in metrics.items()})
        return row

    def load_eval(self, path: str, batch_size: int) -> None:
        c = self.config.data
        raw = skip_header(read_examples(path, c), self.config.task, c.get("has_header"),
                          self.labels or None)  # fmt: skip
        self.eval_data = data.eval_batches(raw, self.labels, self.config.task, self.tokenizer, c,
                                           batch_size, "the fine-tuning data")  # fmt: skip
        self.dataset = dataclasses.replace(self.dataset, eval=self.eval_data, eval_examples=raw)

    def load_inputs(self, path: str, batch_size: int) -> None:
        raw = data.read_inputs(path)
        self.eval_data = data.eval_batches(raw, self.labels, self.config.task, self.tokenizer,
                                           self.config.data, batch_size, "")  # fmt: skip

    def prediction_rows(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        logits = outputs["logits"]
        if self.regression:
            return [{"score": float(x)} for x in logits[:, 0]]
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
        return [{"label": self.labels[int(i)], "probability": float(p[i])}
                for p, i in zip(probs, probs.argmax(axis=-1))]  # fmt: skip

    def report(self, row: dict[str, float], outputs: dict[str, np.ndarray], out_dir) -> str:
        text = reporting.metrics_section("Evaluation", row)
        if self.regression:
            return text
        gold = self.eval_data.data.labels
        cm = classification_metrics.confusion_matrix(
            gold, outputs["logits"].argmax(axis=-1), len(self.labels)
        )
        rows = reporting.per_class_rows(cm, self.labels)
        reporting.plot_confusion_matrix(cm, self.labels, str(out_dir / CONFUSION_FILE))
        header = ["class", "precision", "recall", "f1", "support"]
        return (text + "## Per class\n\n" + reporting.markdown_table(header, rows)
                + f"\n![confusion matrix]({CONFUSION_FILE})\n")  # fmt: skip

    def on_end(self, workdir: epath.Path, outputs: dict[str, np.ndarray] | None) -> None:
        """WORKDIR/predictions.tsv from the best checkpoint's eval pass: per eval example its
        predicted label and probability (or score), the gold label and the text."""
        if outputs is None:
            return
        logits = outputs["logits"]
        examples = self.dataset.eval_examples
        header = ["index", "prediction", "probability", "label", "text"]
        if self.labels:
            probs = np.asarray(jax.nn.softmax(logits, axis=-1))
            predicted = [self.labels[i] for i in np.argmax(probs, axis=-1)]
            probability = [f"{p:.4f}" for p in probs.max(axis=-1)]
        else:
            predicted, probability = [f"{x:.6g}" for x in logits[:, 0]], [""] * len(logits)
        texts = [examples.text_a] + ([examples.text_b] if examples.text_b is not None else [])
        if examples.text_b is not None:
            header.append("text_b")
        lines = ["\t".join(header)]
        for i, row in enumerate(zip(predicted, probability, examples.label, *texts)):
            lines.append("\t".join([str(i), *(_one_line(x) for x in row)]))
        files.write_text(workdir / PREDICTIONS_FILE, "\n".join(lines) + "\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())  # A TSV cell: no tabs or line breaks.
