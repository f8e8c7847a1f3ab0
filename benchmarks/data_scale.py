"""How the data path scales with the corpus: build throughput and memory, loader memory.

    python benchmarks/data_scale.py [--copies=1,8,64] [--workers=1,2] [--unit_mb=8] \
        [--out=/tmp/data_scale] [--legacy_commit=c7421f9]

For each K in --copies, the corpus is K copies of data/sample/train.txt (K files). For each
worker count W it runs `python -m data_pipeline.build` on Beam's DirectRunner
(`--direct_num_workers=W --direct_running_mode=multi_processing`) and reports the build's wall
time, tokens/s per worker, and the peak RSS of its processes (the largest of the driver and the
workers; `RUSAGE_CHILDREN` of this script). Then a separate process opens the built directory and
makes 100 training batches of 32 x 128 (`loader.PretrainingLoader`), reporting its own peak RSS.

`--legacy_commit` measures the old path too (a git worktree of that commit): its
`data_pipeline.pretokenize` and `loader.load_or_build_store`, which held every instance in one
process, and a loader process that loads the whole store for 100 batches.

Prints one JSON line per measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "train.txt"

_LOADER = """
import json, resource, sys, time
import numpy as np
from data_pipeline import loader, masking, records, vocab
directory, tokenizer_path = sys.argv[1], sys.argv[2]
tok = vocab.load(tokenizer_path)
data = records.BuiltData(directory)
train = loader.PretrainingLoader(
    data, masking.MaskingVocab.from_tokenizer(tok), seed=0, global_batch_size=32,
    max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15, whole_word_masking=False)
start = time.perf_counter()
for step in range(100):
    train.batch(step)
print(json.dumps({"loader_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loader_seconds": time.perf_counter() - start, "records": len(data)}))
"""

_LEGACY = """
import json, resource, sys, time
from data_pipeline import loader, masking
from data_pipeline.tokenizer import Tokenizer
spec, tokenizer_path, cache = sys.argv[1], sys.argv[2], sys.argv[3]
tok = Tokenizer(tokenizer_path)
start = time.perf_counter()
store = loader.load_or_build_store(spec, tok, seed=0, max_seq_length=128, short_seq_prob=0.1,
                                   random_next_prob=0.5, dupe_factor=1, cache_dir=cache)
built = time.perf_counter() - start
train = loader.PretrainingLoader(store, masking.MaskingVocab.from_tokenizer(tok), seed=0,
    global_batch_size=32, max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15,
    whole_word_masking=False)
for step in range(100):
    train.batch(step)
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": built, "tokens": int(len(store.tokens))}))
"""


def _measure(args: list[str], env: dict | None = None, cwd: Path = REPO) -> dict:
    """Runs `args` from a wrapper process, so its peak RSS is not mixed with earlier runs'."""
    wrapper = (
        "import json, subprocess, sys, time, resource\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'code': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr[-3000:],"
        " 'seconds': time.perf_counter() - t,"
        " 'max_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *args], cwd=cwd, capture_output=True,
                         text=True, env=env)  # fmt: skip
    result = json.loads(out.stdout)
    if result["code"]:
        raise SystemExit(f"{' '.join(args[:4])} failed:\n{result['stderr']}")
    return result


def _corpus(root: Path, copies: int) -> str:
    folder = root / f"corpus-{copies}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for i in range(copies):
            shutil.copyfile(SAMPLE, folder / f"copy-{i:03d}.txt")
    return str(folder / "*.txt")


def _tokenizer(root: Path) -> str:
    prefix = root / "sp8k"
    if not (root / "sp8k.model").exists():
        from data_pipeline.vocab import unigram

        unigram.train_tokenizer([str(SAMPLE)], 8000, str(prefix))
    return str(root / "sp8k.model")


def measure_new(root: Path, copies: int, workers: int, unit_mb: float, tokenizer: str) -> dict:
    out = root / f"built-{copies}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    build = _measure([
        sys.executable, "-m", "data_pipeline.build", f"--input={_corpus(root, copies)}",
        f"--output_dir={out}", f"--tokenizer_model={tokenizer}", f"--unit_mb={unit_mb}",
        f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing",
    ])  # fmt: skip
    from data_pipeline import shards

    totals = shards.summary(str(out))
    loaded = _measure([sys.executable, "-c", _LOADER, str(out), tokenizer])
    stats = json.loads(loaded["stdout"])
    return {
        "path": "beam+arrayrecord", "copies": copies, "workers": workers,
        "tokens": totals["tokens"], "shards": totals["shards"],
        "build_seconds": round(build["seconds"], 2),
        "build_tokens_per_sec_per_worker": round(totals["tokens"] / build["seconds"] / workers),
        "build_max_rss_mb": round(build["max_rss_mb"], 1),
        "loader_max_rss_mb": round(stats["loader_max_rss_mb"], 1),
        "loader_seconds_100_batches": round(stats["loader_seconds"], 2),
    }  # fmt: skip


def measure_legacy(root: Path, copies: int, commit: str, tokenizer: str) -> dict:
    tree = root / f"legacy-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO,
                       check=True, capture_output=True)  # fmt: skip
    cache = root / f"legacy-cache-{copies}"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
    run = _measure([sys.executable, "-c", _LEGACY, _corpus(root, copies), tokenizer, str(cache)],
                   env=env, cwd=tree)  # fmt: skip
    stats = json.loads(run["stdout"])
    return {
        "path": f"in-memory store ({commit})", "copies": copies, "workers": 1,
        "tokens": stats["tokens"], "build_seconds": round(stats["seconds"], 2),
        "build_tokens_per_sec_per_worker": round(stats["tokens"] / stats["seconds"]),
        "build_max_rss_mb": round(run["max_rss_mb"], 1),
        "loader_max_rss_mb": None,  # The same process builds and loads: see build_max_rss_mb.
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", default="1,8,64")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--unit_mb", type=float, default=8.0)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "data_scale"))
    parser.add_argument("--legacy_commit", default="")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(root)
    rows = []
    for copies in map(int, args.copies.split(",")):
        for workers in map(int, args.workers.split(",")):
            rows.append(measure_new(root, copies, workers, args.unit_mb, tokenizer))
            print(json.dumps(rows[-1]), flush=True)
        if args.legacy_commit:
            rows.append(measure_legacy(root, copies, args.legacy_commit, tokenizer))
            print(json.dumps(rows[-1]), flush=True)
    keys = ["path", "copies", "workers", "tokens", "build_seconds",
            "build_tokens_per_sec_per_worker", "build_max_rss_mb", "loader_max_rss_mb"]  # fmt: skip
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k)) for k in keys) + " |")


if __name__ == "__main__":
    main()
