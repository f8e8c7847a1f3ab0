"""Extractive question answering (SQuAD) as a fine-tuning task of the one loop.

Data: SQuAD JSON or TFDS, question + context windows (`data_pipeline/tasks/squad.py`). Model:
start and end logits per token (`heads.TokenClassifier` with 2 outputs; no dropout for BERT, as
Hugging Face's `BertForQuestionAnswering`). Loss: the mean of the start and end cross-entropies
over the windows of the global batch (a window without the answer targets [CLS]). Eval: answers
decoded over all windows of each question (`qa_metrics.decode`), exact match and F1 with SQuAD's
normalization; WORKDIR/best keeps the best F1; WORKDIR/predictions.json maps question ids to
answers (the official evaluation script's input) at the end.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from data_pipeline import files
from data_pipeline.errors import DataError
from data_pipeline.tasks import squad
from pretrain.models.heads import TokenClassifier
from pretrain.tasks import qa_metrics, reporting
from pretrain.tasks.finetuning import FinetuningTask, resolve_model_config
from pretrain.training.task import Batch, Sums

PREDICTIONS_FILE = "predictions.json"


def span_loss_sums(logits: jax.Array, batch: Batch) -> Sums:
    """Sums over windows of (start CE + end CE) / 2, and exact start-and-end hits."""
    weights = batch["example_weight"]  # [B]
    total, hits = 0.0, 1.0
    for i, key in enumerate(("start_positions", "end_positions")):
        log_probs = jax.nn.log_softmax(logits[..., i], axis=-1)  # [B, S]
        gold = jnp.take_along_axis(log_probs, batch[key][:, None], axis=-1)[:, 0]
        total = total - gold / 2
        hits = hits * (jnp.argmax(logits[..., i], axis=-1) == batch[key])
    return {
        "loss_sum": jnp.sum(jnp.where(weights > 0, total * weights, 0.0)),
        "correct": jnp.sum(hits.astype(jnp.float32) * weights),
    }


class QaTask(FinetuningTask):
    """An answer span (or none) per question."""

    tasks = ("qa",)
    export_head = "qa"
    train_format = "SQuAD JSON or tfds:squad"
    best_metric = "eval_f1"

    def __init__(self, config, model_config, pretrained_step, train=None, evals=None,
                 eval_questions=None):  # fmt: skip
        super().__init__(config, model_config, pretrained_step, train, evals)
        self.eval_questions = eval_questions

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        super().check_config(config)
        squad.check_config(config.data)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, workdir: epath.Path) -> QaTask:
        tokenizer, step, pretrained = cls.prepare(config, workdir)
        c = config.data
        train_questions = squad.read_questions(c.train_file.strip())
        cls._check_version(train_questions, config)
        windows = squad.make_windows(train_questions, tokenizer, c)
        train = squad.TrainBatches(windows, seed=config.seed, batch_size=config.global_batch_size)
        evals, questions = None, None
        if c.eval_file.strip():
            questions = squad.read_questions(c.eval_file.strip())
            cls._check_version(questions, config)
            evals = squad.EvalBatches(squad.make_windows(questions, tokenizer, c),
                                      batch_size=config.eval_batch_size)  # fmt: skip
        model_config = resolve_model_config(config, tokenizer.vocab_size, pretrained)
        task = cls(config, model_config, step, train, evals, questions)
        task.tokenizer = tokenizer
        return task

    @staticmethod
    def _check_version(questions: list[squad.Question], config) -> None:
        impossible = sum(q.is_impossible for q in questions)
        if impossible and not config.data.version_2:
            raise DataError(
                f"{impossible} questions are unanswerable (SQuAD v2.0 data): set "
                "config.data.version_2=True to learn the null answer."
            )

    def make_model(self, rngs: nnx.Rngs) -> TokenClassifier:
        # As Hugging Face's: BertForQuestionAnswering has no dropout before its output layer.
        dropout = 0.0 if self.model_config.arch == "bert" else self.config.classifier_dropout
        return self.adapt(
            TokenClassifier(self.model_config, 2, dropout_rate=dropout, rngs=rngs), rngs
        )

    def forward(self, model: TokenClassifier, batch: Batch, rngs) -> jax.Array:
        logits = model.on_batch(batch, rngs)
        # Padding can never be an answer boundary.
        return jnp.where(batch["input_mask"][..., None] > 0, logits, -1e9)

    def loss_weights(self, batch: Batch) -> Sums:
        return {"windows": jnp.maximum(batch["example_weight"].sum(), 1.0)}

    def hard_sums(self, logits: jax.Array, batch: Batch) -> Sums:
        return span_loss_sums(logits, batch)

    def soft_logits(self, logits: jax.Array) -> jax.Array:
        return jnp.swapaxes(logits, -1, -2)  # [B, 2, S]: start and end are each over positions.

    def soft_weights(self, batch: Batch) -> jax.Array:
        weights = batch["example_weight"]
        return jnp.broadcast_to(weights[:, None], (weights.shape[0], 2))

    def metrics(self, sums: Sums, weights: Sums) -> dict[str, jax.Array]:
        return {"loss": sums["loss_sum"] / weights["windows"],
                "span_accuracy": sums["correct"] / weights["windows"]}  # fmt: skip

    def eval_step(self, model: TokenClassifier, batch: Batch) -> tuple[Sums, dict]:
        logits = self.forward(model, batch, None)
        sums = span_loss_sums(logits, batch)
        sums["windows"] = batch["example_weight"].sum()
        return sums, {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}

    def answers(self, outputs: dict[str, np.ndarray], windows, questions) -> list:
        c = self.config.data
        return qa_metrics.decode(
            windows, outputs["start_logits"], outputs["end_logits"],
            [q.context for q in questions], max_answer_length=c.max_answer_length,
            allow_null=c.version_2, null_threshold=c.null_score_threshold,
        )  # fmt: skip

    def eval_metrics(self, sums: dict[str, Any], outputs: dict[str, np.ndarray]) -> dict:
        answers = self.answers(outputs, self.eval_data.windows, self.eval_questions)
        golds = [[text for text, _ in q.answers] for q in self.eval_questions]
        scores = qa_metrics.squad_scores([a.text for a in answers], golds)
        return {"eval_loss": float(sums["loss_sum"]) / max(float(sums["windows"]), 1.0),
                "eval_exact_match": scores["exact_match"], "eval_f1": scores["f1"]}  # fmt: skip

    def _load(self, path: str, batch_size: int, labelled: bool) -> None:
        self.eval_questions = squad.read_questions(path, labelled)
        windows = squad.make_windows(self.eval_questions, self.tokenizer, self.config.data)
        self.eval_data = squad.EvalBatches(windows, batch_size=batch_size)

    def load_eval(self, path: str, batch_size: int) -> None:
        self._load(path, batch_size, labelled=True)

    def load_inputs(self, path: str, batch_size: int) -> None:
        self._load(path, batch_size, labelled=False)

    def prediction_rows(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Per question: its id, the answer text and its character offsets in the context
        (None for the null answer)."""
        answers = self.answers(outputs, self.eval_data.windows, self.eval_questions)
        return [{"id": q.id, "answer": a.text, "start": a.start if a.text else None,
                 "end": a.end if a.text else None}
                for q, a in zip(self.eval_questions, answers)]  # fmt: skip

    def report(self, row: dict[str, float], outputs: dict[str, np.ndarray], out_dir) -> str:
        """EM and F1 over all questions, and apart for answerable and unanswerable ones."""
        answers = self.answers(outputs, self.eval_data.windows, self.eval_questions)
        rows = []
        for name, keep in (("all", lambda q: True), ("has answer", lambda q: bool(q.answers)),
                           ("no answer", lambda q: not q.answers)):  # fmt: skip
            pairs = [(a.text, [t for t, _ in q.answers])
                     for q, a in zip(self.eval_questions, answers) if keep(q)]  # fmt: skip
            if pairs:
                scores = qa_metrics.squad_scores(*zip(*pairs))
                rows.append([name, scores["exact_match"], scores["f1"], len(pairs)])
        header = ["questions", "exact match", "f1", "count"]
        return (reporting.metrics_section("Evaluation", row) + "## By kind of question\n\n"
                + reporting.markdown_table(header, rows))  # fmt: skip

    def on_end(self, workdir: epath.Path, outputs: dict[str, np.ndarray] | None) -> None:
        """WORKDIR/predictions.json: question id -> answer text, from the best checkpoint."""
        if outputs is None:
            return
        answers = self.answers(outputs, self.eval_data.windows, self.eval_questions)
        by_id = {q.id: a.text for q, a in zip(self.eval_questions, answers)}
        files.write_text(workdir / PREDICTIONS_FILE, json.dumps(by_id, indent=1) + "\n")
