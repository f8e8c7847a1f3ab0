"""Exact nearest-neighbour search on the devices and BEIR's retrieval metrics.

`search` scores every query against the whole corpus (a matmul of unit vectors: cosine) with
the corpus split over this process's devices: each device keeps its shard's top k, then the
best k of those are the exact top k. No index library is needed at BEIR's scale.

`query_metrics` computes per query what BEIR reports, as it computes them (pytrec_eval for
nDCG, recall and MAP; BEIR's own loop for MRR): a document is relevant when its qrels score is
>= 1 (pytrec_eval's relevance_level); nDCG's gain is the score itself (trec_eval's linear gain)
and its ideal ranking sorts every judged document; Recall@k divides by all relevant documents;
MAP is pytrec_eval's `map` of the top `CUTOFF` documents (= BEIR's MAP@100); MRR@10 is 1 / rank
of the first relevant document in the top 10. As BEIR's evaluator, a document whose id is the
query's own is dropped from its ranking. The eval row averages over the judged queries.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CUTOFF = 100  # Documents retrieved per query: the deepest cutoff reported.
METRICS = ("ndcg_at_10", "mrr_at_10", "recall_at_1", "recall_at_10", "recall_at_100", "map")
_QUERY_BLOCK = 256  # Queries scored per call: bounds the [queries, corpus shard] score matrix.


@functools.lru_cache(maxsize=8)
def _search_fn(mesh: Mesh, k: int, shard: int, num_docs: int):
    local_k = min(k, shard)

    def local(q: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        start = jax.lax.axis_index("docs") * shard
        scores = jnp.einsum("qh,dh->qd", q, c, precision=jax.lax.Precision.HIGHEST)
        ids = start + jnp.arange(shard)
        scores = jnp.where(ids[None] < num_docs, scores, -jnp.inf)  # Padding rows never win.
        top, idx = jax.lax.top_k(scores, local_k)
        return top[None], (idx + start)[None]

    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec("docs")),
        out_specs=PartitionSpec("docs"),
    )

    def search(q: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        top, idx = sharded(q, c)  # [devices, Q, local_k]
        top = jnp.moveaxis(top, 0, 1).reshape(q.shape[0], -1)
        idx = jnp.moveaxis(idx, 0, 1).reshape(q.shape[0], -1)
        best, where = jax.lax.top_k(top, k)
        return best, jnp.take_along_axis(idx, where, axis=1)

    return jax.jit(search)


def search(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, corpus indices), both [Q, min(k, D)], best first: the exact top k by dot product."""
    devices = jax.local_devices()
    k = min(k, len(corpus))
    shard = -(-len(corpus) // len(devices))
    padded = np.zeros((shard * len(devices), corpus.shape[1]), np.float32)
    padded[: len(corpus)] = corpus
    mesh = Mesh(np.array(devices), ("docs",))
    docs = jax.device_put(padded, NamedSharding(mesh, PartitionSpec("docs")))
    fn = _search_fn(mesh, k, shard, len(corpus))
    block = min(_QUERY_BLOCK, max(len(queries), 1))
    scores, indices = [], []
    for start in range(0, len(queries), block):
        q = np.zeros((block, corpus.shape[1]), np.float32)  # One shape: one compilation.
        part = queries[start : start + block]
        q[: len(part)] = part
        s, i = jax.device_get(fn(jax.device_put(q, NamedSharding(mesh, PartitionSpec())), docs))
        scores.append(s[: len(part)])
        indices.append(i[: len(part)])
    return np.concatenate(scores), np.concatenate(indices)


def query_metrics(ranked: Sequence[str], judged: Mapping[str, int]) -> dict[str, float]:
    """The metrics of one query from its ranked document ids (best first) and its qrels."""
    rel = [judged.get(d, 0) for d in ranked[:CUTOFF]]
    num_relevant = sum(1 for r in judged.values() if r >= 1)
    dcg = sum(max(r, 0) / math.log2(i + 2) for i, r in enumerate(rel[:10]))
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:10]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    hits = [i for i, r in enumerate(rel) if r >= 1]  # 0-based ranks of relevant documents.
    out = {
        "ndcg_at_10": dcg / idcg if idcg > 0 else 0.0,
        "mrr_at_10": next((1.0 / (i + 1) for i in hits if i < 10), 0.0),
        "map": sum((n + 1) / (i + 1) for n, i in enumerate(hits)) / num_relevant
        if num_relevant
        else 0.0,
    }
    for k in (1, 10, 100):
        out[f"recall_at_{k}"] = (
            sum(1 for i in hits if i < k) / num_relevant if num_relevant else 0.0
        )
    return out


def rankings(
    query_ids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray
) -> list[list[str]]:
    """Ranked document ids per query from `search`'s indices, the query's own id dropped."""
    return [[doc_ids[j] for j in row if doc_ids[j] != q] for q, row in zip(query_ids, indices)]


def evaluate(
    query_ids: Sequence[str], ranked: Sequence[Sequence[str]], qrels: Mapping[str, Mapping]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(the mean of each metric over the queries, the per-query metrics in query order)."""
    per_query = [query_metrics(r, qrels[q]) for q, r in zip(query_ids, ranked)]
    mean = {m: float(np.mean([p[m] for p in per_query])) for m in METRICS}
    return mean, per_query
