"""BM25 on a BEIR folder, scored with the metrics of `pretrain.finetune`'s retrieval eval rows.

    pip install bm25s   # A benchmark tool only: not a dependency of the project.
    python benchmarks/bm25_retrieval.py --beir_dir=/tmp/wordnet_retrieval/beir

The baseline users pick first: bm25s (Lucene's BM25 variant, k1 = 1.5, b = 0.75, English
stopwords removed, lower-cased), the top 100 documents per query, then the very metric code of
the eval rows (`pretrain/tasks/retrieval_metrics.py`: BEIR's nDCG@10, MRR@10, Recall@1/10/100,
MAP). The last stdout line is one JSON object with the `eval_*` names of the eval rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline.tasks import beir  # noqa: E402
from pretrain.tasks import retrieval_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beir_dir", required=True)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    import bm25s  # Deferred: only this script needs it.

    data = beir.read_beir(args.beir_dir, args.split)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(data.docs, stopwords="en", show_progress=False), show_progress=False
    )
    k = min(retrieval_metrics.CUTOFF + 1, len(data.docs))
    indices, _ = retriever.retrieve(
        bm25s.tokenize(data.queries, stopwords="en", show_progress=False), k=k, show_progress=False
    )
    ranked = retrieval_metrics.rankings(data.query_ids, data.doc_ids, indices)
    mean, _ = retrieval_metrics.evaluate(data.query_ids, ranked, data.qrels)
    print(f"BM25 on {args.beir_dir}: {len(data.queries)} queries, {len(data.docs)} documents")
    print(json.dumps({f"eval_{name}": value for name, value in mean.items()}))


if __name__ == "__main__":
    main()
