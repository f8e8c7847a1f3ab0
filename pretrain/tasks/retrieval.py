"""Sentence embeddings for retrieval as a fine-tuning task of the one loop.

Data: pairs `query<TAB>positive[<TAB>negative...]` to train on, a BEIR folder to evaluate on
(`data_pipeline/tasks/beir.py`). Model: the encoder, pooled (`retrieval.pooling`: mean, cls or
last) and L2-normalized (`heads.SentenceEmbedder`). Loss: InfoNCE, the multiple-negatives
ranking loss of sentence-transformers: each query's positive against every other passage of
the batch (the other rows' positives and all hard negatives), at a fixed or learned
temperature; `retrieval.symmetric` adds the passage -> query direction, averaged.

Global negatives: the loss is a function of the whole global batch's [B, H] embeddings. Under
jit with the batch sharded over the data axes, the score matrix `q @ d.T` is [B, B * G] of the
global arrays, so XLA gathers the embeddings across the devices (and hosts) itself: every query
sees every passage of the global batch, as on one device (tests/test_retrieval.py). A
microbatch would see only its own rows, so `grad_accum_steps` must be 1 here; when the batch's
activations do not fit, `retrieval.embed_chunks` embeds it in chunks under remat instead (as
GradCache: only the embeddings are kept, each chunk's forward is recomputed for its backward),
which leaves the loss and its gradient unchanged.

Eval: the eval queries and the corpus are embedded in one eval pass, then searched exactly on the
devices and scored with BEIR's metrics (`retrieval_metrics.py`); WORKDIR/best keeps the best
nDCG@10.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from data_pipeline.tasks import beir
from pretrain.models.heads import POOLING, SentenceEmbedder
from pretrain.tasks import reporting, retrieval_metrics
from pretrain.tasks.finetuning import FinetuningTask, resolve_model_config
from pretrain.training.errors import ConfigError
from pretrain.training.task import Batch, Sums

MAX_SCALE = 100.0  # A learned 1 / temperature is capped here, as CLIP caps its logit scale.
WORST_QUERIES = 20  # Rows of report.md's worst-queries table.


class RetrievalTask(FinetuningTask):
    """One unit vector per text, trained so that a query's nearest passage is its positive."""

    tasks = ("retrieval",)
    export_head = "none"  # The plain encoder (BertModel / ModernBertModel) + pooling modules.
    train_format = "a pairs TSV file (query<TAB>positive[<TAB>negative...])"
    best_metric = "eval_ndcg_at_10"

    def __init__(self, config, model_config, pretrained_step, train_data=None):
        super().__init__(config, model_config, pretrained_step, train_data)
        self.beir: beir.BeirSet | None = None
        self.pooling = config.retrieval.pooling

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        super().check_config(config)
        r = config.retrieval
        if r.pooling not in POOLING:
            raise ConfigError(f"config.retrieval.pooling={r.pooling!r}: use one of {POOLING}.")
        if not 0 < r.temperature <= 1:
            raise ConfigError(f"config.retrieval.temperature={r.temperature} must be in (0, 1].")
        if config.grad_accum_steps != 1:
            raise ConfigError(
                f"config.grad_accum_steps={config.grad_accum_steps}: the retrieval loss takes "
                "its negatives from the whole global batch, which a microbatch does not see; use "
                "grad_accum_steps=1 and retrieval.embed_chunks to bound activation memory."
            )
        if r.embed_chunks < 1 or config.global_batch_size % r.embed_chunks:
            raise ConfigError(
                f"config.retrieval.embed_chunks={r.embed_chunks} must be >= 1 and divide "
                f"global_batch_size={config.global_batch_size}."
            )
        names = tuple(f"eval_{m}" for m in retrieval_metrics.METRICS)
        if config.best_metric and config.best_metric not in names:
            raise ConfigError(f"config.best_metric={config.best_metric!r}: use one of {names}.")

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, workdir: epath.Path) -> RetrievalTask:
        tokenizer, step, pretrained = cls.prepare(config, workdir)
        pairs = beir.read_pairs(config.data.train_file.strip())
        train = beir.train_batches(
            pairs,
            tokenizer,
            config.data,
            seed=config.seed,
            num_negatives=config.data.num_negatives,
            batch_size=config.global_batch_size,
        )
        model_config = resolve_model_config(config, tokenizer.vocab_size, pretrained)
        task = cls(config, model_config, step, train)
        task.tokenizer = tokenizer
        if config.data.eval_file.strip():
            task.load_eval(config.data.eval_file.strip(), config.eval_batch_size)
        return task

    def make_model(self, rngs: nnx.Rngs) -> SentenceEmbedder:
        r = self.config.retrieval
        model = SentenceEmbedder(
            self.model_config,
            pooling=r.pooling,
            temperature=r.temperature,
            learn_temperature=r.learn_temperature,
            rngs=rngs,
        )
        return self.adapt(model, rngs)

    def scale(self, model: SentenceEmbedder) -> jax.Array:
        """1 / temperature: learned (capped at MAX_SCALE) or fixed."""
        if model.log_scale is None:
            return jnp.float32(1.0 / self.config.retrieval.temperature)
        return jnp.minimum(jnp.exp(model.log_scale[...]), MAX_SCALE)

    def loss_weights(self, batch: Batch) -> Sums:
        return {"examples": jnp.maximum(batch["example_weight"].sum(), 1.0)}

    def _embed(self, model: SentenceEmbedder, ids: jax.Array, mask: jax.Array, rngs) -> jax.Array:
        """[N, ..., S] -> [N, ..., H]; with `embed_chunks` k > 1, rows c, c + k, ... (each
        device's rows in every chunk, as the step's microbatches) are embedded under remat."""
        k, deterministic = self.config.retrieval.embed_chunks, rngs is None
        if k == 1:
            return model(ids, mask, deterministic=deterministic, rngs=rngs)
        run = nnx.remat(lambda m, i, x, r: m(i, x, deterministic=deterministic, rngs=r))
        parts = [run(model, ids[c::k], mask[c::k], rngs) for c in range(k)]
        return jnp.stack(parts, axis=1).reshape(ids.shape[0], *parts[0].shape[1:])

    def loss_sums(self, model: SentenceEmbedder, batch: Batch, rngs: nnx.Rngs | None) -> Sums:
        q = self._embed(model, batch["query_input_ids"], batch["query_input_mask"], rngs)  # [B, H]
        d = self._embed(model, batch["doc_input_ids"], batch["doc_input_mask"], rngs)  # [B, G, H]
        scale, symmetric = self.scale(model), self.config.retrieval.symmetric
        return contrastive_sums(q, d, batch["example_weight"], scale, symmetric=symmetric)

    def metrics(self, sums: Sums, weights: Sums) -> dict[str, jax.Array]:
        return {
            "loss": sums["loss_sum"] / weights["examples"],
            "accuracy": sums["correct"] / weights["examples"],
        }

    def eval_step(self, model: SentenceEmbedder, batch: Batch) -> tuple[Sums, dict]:
        e = model(batch["input_ids"], batch["input_mask"], deterministic=True)
        return {"texts": batch["example_weight"].sum()}, {"embedding": e}

    def _ranked(self, outputs: dict[str, np.ndarray]) -> list[list[str]]:
        e, n = outputs["embedding"], len(self.beir.query_ids)
        # One more than the cutoff: a query's own id is dropped from its ranking (BEIR).
        _, idx = retrieval_metrics.search(e[:n], e[n:], retrieval_metrics.CUTOFF + 1)
        return retrieval_metrics.rankings(self.beir.query_ids, self.beir.doc_ids, idx)

    def eval_metrics(self, sums: dict[str, Any], outputs: dict[str, np.ndarray]) -> dict:
        mean, _ = retrieval_metrics.evaluate(
            self.beir.query_ids, self._ranked(outputs), self.beir.qrels
        )
        return {f"eval_{k}": v for k, v in mean.items()}

    def load_eval(self, path: str, batch_size: int) -> None:
        self.beir = beir.read_beir(path, self.config.data.eval_split)
        self.eval_data = beir.text_batches(
            self.beir.queries + self.beir.docs,
            self.tokenizer,
            self.config.data,
            batch_size,
            num_queries=len(self.beir.queries),
            source=path,
        )

    def load_inputs(self, path: str, batch_size: int) -> None:
        self.eval_data = beir.text_batches(
            beir.read_texts(path), self.tokenizer, self.config.data, batch_size, source=path
        )

    def prediction_rows(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return embedding_rows(outputs["embedding"])

    def report(self, row: dict[str, float], outputs: dict[str, np.ndarray], out_dir) -> str:
        ranked = self._ranked(outputs)
        _, per_query = retrieval_metrics.evaluate(self.beir.query_ids, ranked, self.beir.qrels)
        order = sorted(range(len(per_query)), key=lambda i: (per_query[i]["ndcg_at_10"], i))
        rows = []
        for i in order[:WORST_QUERIES]:
            qid, judged = self.beir.query_ids[i], self.beir.qrels[self.beir.query_ids[i]]
            first = next((r + 1 for r, d in enumerate(ranked[i]) if judged.get(d, 0) >= 1), None)
            rows.append(
                [
                    qid,
                    _short(self.beir.queries[i]),
                    per_query[i]["ndcg_at_10"],
                    first or f"> {retrieval_metrics.CUTOFF}",
                    ranked[i][0] if ranked[i] else "",
                ]
            )
        header = ["query", "text", "nDCG@10", "rank of first relevant", "top document"]
        return (
            reporting.metrics_section("Evaluation", row)
            + f"## The {len(rows)} worst queries by nDCG@10\n\n"
            + reporting.markdown_table(header, rows)
        )


def contrastive_sums(
    q: jax.Array, d: jax.Array, weights: jax.Array, scale: jax.Array, *, symmetric: bool
) -> Sums:
    """InfoNCE sums over the batch: q [B, H] against every passage of d [B, G, H] (row i's
    positive is d[i, 0]); rows of weight 0 neither ask nor answer. `loss_sum` is the summed
    cross-entropy (the mean of both directions when `symmetric`), `correct` the queries whose
    top passage is their positive."""
    b, g, h = d.shape
    candidates = d.reshape(b * g, h)
    real = weights > 0
    neg_inf = jnp.float32(-1e9)  # Not -inf: a padding row's logsumexp stays finite.
    logits = scale * jnp.einsum("qh,ch->qc", q, candidates, precision=jax.lax.Precision.HIGHEST)
    logits = jnp.where(jnp.repeat(real, g)[None], logits, neg_inf)  # [B, B * G]
    target = jnp.arange(b) * g
    ce = jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(b), target]
    loss = jnp.sum(jnp.where(real, weights * ce, 0.0))
    correct = jnp.sum(jnp.where(real, weights * (jnp.argmax(logits, axis=1) == target), 0.0))
    if symmetric:  # Each positive against every query of the batch.
        back = scale * jnp.einsum("ph,qh->pq", d[:, 0], q, precision=jax.lax.Precision.HIGHEST)
        back = jnp.where(real[None], back, neg_inf)  # [B, B]
        ce_back = jax.nn.logsumexp(back, axis=1) - jnp.diagonal(back)
        loss = 0.5 * (loss + jnp.sum(jnp.where(real, weights * ce_back, 0.0)))
    return {"loss_sum": loss, "correct": correct}


def embedding_rows(embeddings: np.ndarray) -> list[dict[str, Any]]:
    """One `{"embedding": [...]}` per text: the JSON lines of `predict` and `embed`."""
    return [{"embedding": [float(x) for x in e]} for e in embeddings]


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
