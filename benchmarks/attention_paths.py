"""Times every attention path on every mask kind, forward and backward; one JSON line each.

    python benchmarks/attention_paths.py [--seq 1024 8192] [--impls xla splash] [--dry_run]

Shapes are ModernBERT-base's heads (N = 12, D = 64) in bfloat16, packed rows of documents of
random lengths with a padded tail; `window` is ModernBERT's ±64. Each line: impl, mask, seq,
`ms` (median of jitted value-and-grad calls; null off the path's own platform, where Pallas
kernels run interpreted), and `temp_bytes`, the compiled program's scratch memory (what grows as
O(S^2) on dense paths). Paths that cannot run on this platform are reported as skipped.
`benchmarks/device_check.py` runs it on the first accelerator lent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pretrain.models import attention  # noqa: E402
from pretrain.models.config import ATTENTION_IMPLS, EncoderConfig  # noqa: E402

MASKS = {"padding": (False, None), "documents": (True, None), "window": (False, 64),
         "documents+window": (True, 64)}  # fmt: skip
PLATFORM = {"cudnn": "gpu", "pallas_gpu": "gpu", "splash": "tpu"}  # None: any platform.
INTERPRETABLE = ("pallas_gpu", "splash")  # Run on CPU in Pallas interpret mode (--dry_run).


def inputs(batch: int, seq: int, heads: int, dim: int, documents: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    real = int(seq * 0.9)
    input_mask = np.zeros((batch, seq), np.int32)
    input_mask[:, :real] = 1
    docs = None
    if documents:
        docs = np.zeros((batch, seq), np.int32)
        ids = np.repeat(np.arange(1, seq + 1), rng.integers(1, max(seq // 8, 2), seq))[:real]
        docs[:, :real] = ids
    q, k, v = (jnp.asarray(rng.normal(size=(batch, seq, heads, dim)), jnp.bfloat16) for _ in "qkv")
    mask = attention.AttentionMask(
        jnp.asarray(input_mask), None if docs is None else jnp.asarray(docs)
    )
    return q, k, v, mask


def measure(impl: str, kind: str, seq: int, a: argparse.Namespace) -> dict:
    row = dict(check="attention", impl=impl, mask=kind, seq=seq, batch=a.batch)
    platform = PLATFORM.get(impl)
    here = jax.default_backend()
    if platform and platform != here and not (a.dry_run and impl in INTERPRETABLE):
        return {**row, "status": "skipped", "reason": f"needs {platform}"}
    heads, dim = a.heads, a.dim
    cfg = EncoderConfig(
        vocab_size=8, hidden_size=heads * dim, num_attention_heads=heads, intermediate_size=8,
        num_hidden_layers=1, dtype=jnp.bfloat16, attention_impl=impl,
        attention_probs_dropout_prob=0.0, splash_block_q=min(512, seq),
        splash_block_kv=min(512, seq),
    )  # fmt: skip
    documents, window = MASKS[kind]
    q, k, v, mask = inputs(a.batch, seq, heads, dim, documents)
    dropout = nnx.Dropout(0.0)

    def loss(q, k, v, mask):
        out = attention.attend(cfg, q, k, v, mask, dropout, deterministic=True, rngs=None,
                               window=window)  # fmt: skip
        return jnp.sum(out.astype(jnp.float32) ** 2)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    try:
        compiled = step.lower(q, k, v, mask).compile()
        memory = compiled.memory_analysis()
        temp = getattr(memory, "temp_size_in_bytes", None) if memory else None
        ms = None
        if not platform or platform == here:  # Interpreted kernels: numbers, not speed.
            jax.block_until_ready(compiled(q, k, v, mask))
            times = []
            for _ in range(a.reps):
                start = time.perf_counter()
                jax.block_until_ready(compiled(q, k, v, mask))
                times.append(time.perf_counter() - start)
            ms = round(1e3 * float(np.median(times)), 3)
    except Exception as e:  # noqa: BLE001 - one failed path must not stop the others.
        status = "oom" if "RESOURCE_EXHAUSTED" in str(e) else "error"
        return {**row, "status": status, "error": str(e).splitlines()[0][:300]}
    return {**row, "status": "ok", "ms": ms, "temp_bytes": temp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--impls", nargs="+", default=list(ATTENTION_IMPLS))
    parser.add_argument("--masks", nargs="+", default=list(MASKS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dry_run", action="store_true", help="tiny shapes, interpreted kernels")
    a = parser.parse_args()
    if a.dry_run:
        a.seq, a.heads, a.dim, a.reps = [256], 2, 16, 1
    for seq in a.seq:
        for impl in a.impls:
            for kind in a.masks:
                print(json.dumps(measure(impl, kind, seq, a)), flush=True)


if __name__ == "__main__":
    main()
