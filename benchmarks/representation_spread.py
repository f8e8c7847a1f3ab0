"""How different an encoder's outputs are from one input to another: a collapse detector.

    python benchmarks/representation_spread.py --workdir=/tmp/quality/bert \
        --texts=/tmp/wordnet_task/eval.tsv [--random_init]

Runs a pretraining workdir's encoder (or the same architecture freshly initialized) on the
first `--n` texts of a `label<TAB>text` file and reports, as one JSON line: the mean cosine
similarity between the [CLS] outputs of different texts, the same for what a classifier reads
(BERT's tanh pooler, ModernBERT's pooled vector), the share of their variance along the first
principal component, and the mean cosine between the token outputs within a text. A model on
masked LM's unigram plateau maps every input to nearly the same vector: similarities near 1 and
one dominant component, which leaves a fine-tuned classifier nothing to separate classes by.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain.hf import exporting  # noqa: E402
from pretrain.models import heads  # noqa: E402


def _mean_offdiagonal_cosine(x: np.ndarray) -> float:
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)
    sims = x @ x.T
    n = len(x)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def _first_component_share(x: np.ndarray) -> float:
    centered = x - x.mean(axis=0)
    singular = np.linalg.svd(centered, compute_uv=False)
    return float(singular[0] ** 2 / np.sum(singular**2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a pretraining workdir")
    parser.add_argument("--texts", required=True, help="label<TAB>text lines")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--random_init", action="store_true")
    args = parser.parse_args()

    restored = exporting.restore_pretraining(args.workdir)
    encoder = heads.make_encoder(restored.model_config, nnx.Rngs(params=0))
    if not args.random_init:
        state = nnx.state(encoder, nnx.Param)
        nnx.replace_by_pure_dict(state, restored.params["encoder"])
        nnx.update(encoder, state)
    tokenizer = restored.tokenizer
    with open(args.texts, encoding="utf-8") as f:
        texts = [line.rstrip("\n").split("\t")[1] for line in f][: args.n]
    ids = np.zeros((len(texts), args.seq), np.int32)
    for i, text in enumerate(texts):
        row = [tokenizer.cls_id, *tokenizer.encode(text)[: args.seq - 2], tokenizer.sep_id]
        ids[i, : len(row)] = row
    mask = (ids > 0).astype(np.int32)
    ids[:, 0] = tokenizer.cls_id

    @jax.jit
    def run(ids, mask):
        x = encoder(ids, mask, jnp.zeros_like(ids), deterministic=True, rngs=None)
        return x.astype(jnp.float32), encoder.pool(x, mask).astype(jnp.float32)

    x, pooled = (np.asarray(a) for a in run(ids, mask))
    within = [_mean_offdiagonal_cosine(x[i, : mask[i].sum()]) for i in range(min(64, len(x)))]
    print(json.dumps({
        "workdir": args.workdir, "random_init": args.random_init,
        "arch": restored.model_config.arch, "texts": len(texts),
        "cls_cosine_between_texts": _mean_offdiagonal_cosine(x[:, 0]),
        "pooled_cosine_between_texts": _mean_offdiagonal_cosine(pooled),
        "cls_first_component_share": _first_component_share(x[:, 0]),
        "pooled_first_component_share": _first_component_share(pooled),
        "token_cosine_within_text": float(np.mean(within)),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
