"""Token classification (tagging) as a fine-tuning task of the one loop.

Data: CoNLL files or a TFDS split (`data_pipeline/tasks/conll.py`), words to pieces and windows
(`data_pipeline/tasks/tagging.py`); the label set from the training data, saved in
WORKDIR/labels.json. Model: every position's output, dropout and a linear layer
(`heads.TokenClassifier`). Loss: cross-entropy at the first piece of each word, summed, divided
by the number of such words in the global batch. Eval: entity-level precision, recall and F1
(`tagging_metrics`), per type, and word accuracy; WORKDIR/best keeps the best entity F1 and
WORKDIR/predictions.conll holds `word gold predicted` per eval word at the end.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from data_pipeline import files
from data_pipeline.tasks import conll
from data_pipeline.tasks import tagging as data
from pretrain.models.heads import TokenClassifier
from pretrain.tasks import reporting, tagging_metrics
from pretrain.tasks.finetuning import FinetuningTask, load_labels, resolve_model_config, save_labels
from pretrain.training.task import Batch, Sums

PREDICTIONS_FILE = "predictions.conll"


def token_loss_sums(logits: jax.Array, batch: Batch) -> Sums:
    """Weighted cross-entropy and hits at the scored positions of [B, S, C] logits."""
    weights = batch["label_weights"] * batch["example_weight"][:, None]  # [B, S]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    gold = jnp.take_along_axis(log_probs, batch["labels"][..., None], axis=-1)[..., 0]
    hits = (jnp.argmax(logits, axis=-1) == batch["labels"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(jnp.where(weights > 0, -gold * weights, 0.0)),
        "correct": jnp.sum(hits * weights),
    }


class TaggingTask(FinetuningTask):
    """A label per word."""

    tasks = ("tagging",)
    export_head = "token"
    train_format = "a CoNLL file or tfds:NAME"
    best_metric = "eval_entity_f1"

    def __init__(self, config, model_config, pretrained_step, labels: list[str],
                 train=None, evals=None, eval_sentences=None):  # fmt: skip
        super().__init__(config, model_config, pretrained_step, train, evals)
        self.labels = labels
        self.eval_sentences = eval_sentences

    @classmethod
    def for_model(cls, config, model_config, labels: list[str]) -> TaggingTask:
        return cls(config, model_config, None, labels)

    def export_labels(self) -> list[str]:
        return list(self.labels)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, workdir: epath.Path) -> TaggingTask:
        tokenizer, step, pretrained = cls.prepare(config, workdir)
        c = config.data
        train_sentences = conll.read_sentences(c.train_file.strip(), c)
        labels = load_labels(workdir, config.task) or data.label_vocabulary(train_sentences)
        save_labels(workdir, config.task, labels)
        train = data.train_batches(train_sentences, labels, c, tokenizer, seed=config.seed,
                                   batch_size=config.global_batch_size)  # fmt: skip
        evals, eval_sentences = None, None
        if c.eval_file.strip():
            eval_sentences = conll.read_sentences(c.eval_file.strip(), c)
            evals = data.eval_batches(eval_sentences, labels, train_sentences.source, c,
                                      tokenizer, config.eval_batch_size)  # fmt: skip
        model_config = resolve_model_config(config, tokenizer.vocab_size, pretrained)
        task = cls(config, model_config, step, labels, train, evals, eval_sentences)
        task.tokenizer = tokenizer
        return task

    def make_model(self, rngs: nnx.Rngs) -> TokenClassifier:
        dropout = self.config.classifier_dropout
        model = TokenClassifier(self.model_config, len(self.labels), dropout_rate=dropout,
                                rngs=rngs)  # fmt: skip
        return self.adapt(model, rngs)

    def forward(self, model: TokenClassifier, batch: Batch, rngs) -> jax.Array:
        return model.on_batch(batch, rngs)

    def hard_sums(self, logits: jax.Array, batch: Batch) -> Sums:
        return token_loss_sums(logits, batch)

    def soft_weights(self, batch: Batch) -> jax.Array:
        return batch["label_weights"] * batch["example_weight"][:, None]  # The scored words.

    def loss_weights(self, batch: Batch) -> Sums:
        return {"words": jnp.maximum(self.soft_weights(batch).sum(), 1.0)}

    def metrics(self, sums: Sums, weights: Sums) -> dict[str, jax.Array]:
        return {"loss": sums["loss_sum"] / weights["words"],
                "accuracy": sums["correct"] / weights["words"]}  # fmt: skip

    def eval_step(self, model: TokenClassifier, batch: Batch) -> tuple[Sums, dict]:
        logits = self.forward(model, batch, None)
        probs = jax.nn.softmax(logits, axis=-1)
        sums = token_loss_sums(logits, batch)
        sums["words"] = jnp.sum(batch["label_weights"] * batch["example_weight"][:, None])
        outputs = {"predicted": jnp.argmax(logits, axis=-1).astype(jnp.int32),
                   "probability": jnp.max(probs, axis=-1)}  # fmt: skip
        return sums, outputs

    def word_tags(self, outputs: dict[str, np.ndarray], sentences) -> list[list[str]]:
        """Predicted tags per word of `sentences`, from the outputs of a pass over them."""
        ids = self.eval_data.word_predictions(outputs["predicted"], sentences)
        return [[self.labels[i] for i in sentence] for sentence in ids]

    def eval_metrics(self, sums: dict[str, Any], outputs: dict[str, np.ndarray]) -> dict:
        predicted = self.word_tags(outputs, self.eval_sentences)
        metrics = tagging_metrics.tagging_metrics(self.eval_sentences.labels, predicted)
        row = {"eval_loss": float(sums["loss_sum"]) / max(float(sums["words"]), 1.0)}
        row.update({f"eval_{k}": v for k, v in metrics.items()})
        return row

    def load_eval(self, path: str, batch_size: int) -> None:
        self.eval_sentences = conll.read_sentences(path, self.config.data)
        self.eval_data = data.eval_batches(
            self.eval_sentences, self.labels, "the fine-tuning data", self.config.data,
            self.tokenizer, batch_size,
        )  # fmt: skip

    def load_inputs(self, path: str, batch_size: int) -> None:
        self.eval_sentences = conll.read_text(path)
        self.eval_data = data.eval_batches(self.eval_sentences, None, "", self.config.data,
                                           self.tokenizer, batch_size)  # fmt: skip

    def prediction_rows(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Per input line: its entities with character offsets in the line, and every tag."""
        inputs = self.eval_sentences
        rows = []
        for tags, spans, text in zip(self.word_tags(outputs, inputs), inputs.spans, inputs.texts):
            found = []
            for kind, first, last in tagging_metrics.entities(tags):
                start, end = spans[first][0], spans[last - 1][1]
                found.append({"type": kind, "start": start, "end": end, "text": text[start:end]})
            rows.append({"entities": found, "tags": tags})
        return rows

    def report(self, row: dict[str, float], outputs: dict[str, np.ndarray], out_dir) -> str:
        predicted = self.word_tags(outputs, self.eval_sentences)
        scores = tagging_metrics.entity_scores(self.eval_sentences.labels, predicted)
        rows = [[kind, s["precision"], s["recall"], s["f1"], s["support"]]
                for kind, s in sorted(scores.items()) if kind != "all"]  # fmt: skip
        total = scores["all"]
        rows.append(["all (micro)", total["precision"], total["recall"], total["f1"],
                     total["support"]])  # fmt: skip
        header = ["entity type", "precision", "recall", "f1", "support"]
        return (reporting.metrics_section("Evaluation", row) + "## Per entity type\n\n"
                + reporting.markdown_table(header, rows))  # fmt: skip

    def on_end(self, workdir: epath.Path, outputs: dict[str, np.ndarray] | None) -> None:
        """WORKDIR/predictions.conll: `word gold predicted` per eval word, from the best
        checkpoint's eval pass."""
        if outputs is None:
            return
        predicted = self.word_tags(outputs, self.eval_sentences)
        lines = []
        for words, gold, tags in zip(self.eval_sentences.words, self.eval_sentences.labels,
                                     predicted):  # fmt: skip
            lines += [f"{w} {g} {p}" for w, g, p in zip(words, gold, tags)] + [""]
        files.write_text(workdir / PREDICTIONS_FILE, "\n".join(lines))
