"""Does pretraining on a CPU budget produce an encoder that transfers? The experiment of
docs/quality.md, end to end, through the project's own command lines.

    python benchmarks/cpu_quality.py --output_dir=/tmp/quality

1. Data (`scripts/`): an English pretraining corpus from GCIDE (Debian `dict-gcide`) and a
   26-class task from WordNet noun glosses (`wordnet-base`), fetched with `apt-get download`
   unless `--corpus_dir` / `--task_dir` point at built ones; an 8k sentencepiece tokenizer.
2. Pretraining, the same tokenizer and data for both: the modern recipe
   (`configs/modernbert_cpu.py`, `--modern_steps`) and the BERT recipe at BERT-mini size
   (`configs/mini.py`: post-LN, NSP, 15% masking, padding) given the same wall time: its step
   count is the modern run's times the ratio of their step times (`pretrain.benchmark`).
3. Fine-tuning on the task (`configs/finetune_classify.py`), for every learning rate of `--lrs`:
   from each checkpoint and from random init of each architecture, the same steps and seed.
4. `OUTPUT_DIR/results.json` and `results.md`: eval MLM accuracy (15% masking) against the
   unigram baseline (always the most frequent token), wall times, every fine-tuning row.

Every stage is skipped when its result exists, so a rerun resumes. tests/test_quality.py runs
the CI-sized version (its flags: smaller corpus, task and runs). Commands and logs: OUTPUT_DIR/logs.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(args: list[str], log: Path) -> float:
    """Runs a command from the repo root with its output in `log`; returns its seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(args) + "\n")
        f.flush()
        proc = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[:4])} ... failed: see {log}")
    return time.perf_counter() - start


def fetch_sources(out: Path) -> tuple[Path, Path]:
    """(gcide.dict.dz, wordnet dir) from the Debian packages, downloaded into `out`."""
    debs = out / "debs"
    gcide = debs / "x/usr/share/dictd/gcide.dict.dz"
    wordnet = debs / "x/usr/share/wordnet"
    if not (gcide.exists() and wordnet.is_dir()):
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "dict-gcide", "wordnet-base"], cwd=debs, check=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), "x"], cwd=debs, check=True)
    return gcide, wordnet


def prepare_data(a: argparse.Namespace, out: Path) -> tuple[Path, Path, Path]:
    """(corpus dir, task dir, tokenizer .model)."""
    corpus = Path(a.corpus_dir) if a.corpus_dir else out / "corpus"
    task = Path(a.task_dir) if a.task_dir else out / "task"
    if not (corpus / "train.txt").exists() or not (task / "train.tsv").exists():
        gcide, wordnet = fetch_sources(out)
        if not (corpus / "train.txt").exists():
            run([PY, "scripts/make_reference_corpus.py", str(gcide), f"--output_dir={corpus}",
                 f"--train_words={a.train_words}"], out / "logs/corpus.txt")  # fmt: skip
        if not (task / "train.tsv").exists():
            run([PY, "scripts/make_wordnet_task.py", f"--wordnet_dir={wordnet}",
                 f"--output_dir={task}", f"--train_rows={a.train_rows}",
                 f"--eval_rows={a.eval_rows}"], out / "logs/task.txt")  # fmt: skip
    model = out / "sp8k.model"
    if not model.exists():
        run([PY, "-m", "data_pipeline.tokenizer", f"--input={corpus}/train.txt",
             f"--vocab_size={a.vocab_size}", f"--output_prefix={out / 'sp8k'}"],
            out / "logs/tokenizer.txt")  # fmt: skip
    return corpus, task, model


def data_flags(corpus: Path, model: Path) -> list[str]:
    return [f"--config.data.train_files={corpus}/train.txt",
            f"--config.data.eval_files={corpus}/eval.txt",
            f"--config.data.tokenizer_model={model}"]  # fmt: skip


def step_time(config: str, flags: list[str], log: Path) -> float:
    """Median seconds of one train step of `config` (`pretrain.benchmark`)."""
    run([PY, "-m", "pretrain.benchmark", f"--config={config}", *flags], log)
    return float(json.loads(log.read_text().strip().splitlines()[-1])["step_time_s"])


def pretrain(name: str, config: str, flags: list[str], out: Path, results: dict) -> Path:
    workdir = out / name
    if name not in results["pretraining"]:
        seconds = run([PY, "-m", "pretrain.train", f"--config={config}", f"--workdir={workdir}",
                       *flags], out / f"logs/{name}.txt")  # fmt: skip
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "eval_mlm_accuracy" in r]
        results["pretraining"][name] = {
            "config": config, "flags": flags, "wall_seconds": round(seconds, 1),
            "steps": evals[-1]["step"], "eval_mlm_accuracy": evals[-1]["eval_mlm_accuracy"],
            "eval_mlm_loss": evals[-1]["eval_mlm_loss"],
            "eval_curve": {r["step"]: round(r["eval_mlm_accuracy"], 4) for r in evals},
        }  # fmt: skip
        save(out, results)
    return workdir


def finetune(name: str, flags: list[str], a, task: Path, out: Path, results: dict) -> None:
    if name in results["finetuning"]:
        return
    workdir = out / "ft" / name
    seconds = run([PY, "-m", "pretrain.finetune", "--config=configs/finetune_classify.py",
                   f"--workdir={workdir}", f"--config.data.train_file={task}/train.tsv",
                   f"--config.data.eval_file={task}/eval.tsv", "--config.dtype=float32",
                   f"--config.num_train_steps={a.ft_steps}",
                   f"--config.data.max_seq_length={a.ft_seq}",
                   f"--config.eval_every_steps={a.ft_steps // 4}", *flags],
                  out / f"logs/ft_{name}.txt")  # fmt: skip
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_accuracy" in r]
    results["finetuning"][name] = {
        "wall_seconds": round(seconds, 1), "final": evals[-1],
        "best_accuracy": max(r["eval_accuracy"] for r in evals),
        "curve": {r["step"]: round(r["eval_accuracy"], 4) for r in evals},
    }  # fmt: skip
    save(out, results)


def unigram_baseline(corpus: Path, model: Path) -> float:
    """Eval MLM accuracy of always predicting the training text's most frequent token."""
    from data_pipeline import vocab

    tokenizer = vocab.load(str(model))
    counts: collections.Counter = collections.Counter()
    for line in (corpus / "train.txt").read_text(encoding="utf-8").splitlines():
        counts.update(tokenizer.encode(line))
    top = counts.most_common(1)[0][0]
    evals = [t for line in (corpus / "eval.txt").read_text(encoding="utf-8").splitlines()
             for t in tokenizer.encode(line)]  # fmt: skip
    return sum(t == top for t in evals) / len(evals)


def save(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(report(results))


def report(results: dict) -> str:
    baseline = results.get("unigram_baseline", 0.0)
    lines = [f"Unigram baseline (eval MLM accuracy): {baseline:.3f}", "",
             "| pretraining | steps | wall s | eval MLM acc (15%) |",
             "|---|---|---|---|"]  # fmt: skip
    for name, r in results["pretraining"].items():
        lines.append(f"| {name} | {r['steps']} | {r['wall_seconds']:.0f} | "
                     f"{r['eval_mlm_accuracy']:.3f} |")  # fmt: skip
    lines += ["", "| fine-tuning | final eval acc | macro-F1 | best acc | wall s |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, r in results["finetuning"].items():
        final = r["final"]
        lines.append(f"| {name} | {final['eval_accuracy']:.3f} | {final['eval_macro_f1']:.3f} | "
                     f"{r['best_accuracy']:.3f} | {r['wall_seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def random_init_flags(config: str, model: Path) -> list[str]:
    """The architecture of `config` (a configs/*.py path) for a random-init fine-tuning run."""
    import importlib

    sys.path.insert(0, str(REPO))
    c = importlib.import_module(f"configs.{Path(config).stem}").get_config().model
    keys = ("arch", "num_hidden_layers", "hidden_size", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "local_attention",
            "global_attn_every_n_layers")  # fmt: skip
    return [f"--config.data.tokenizer_model={model}",
            *(f"--config.model.{k}={c[k]}" for k in keys)]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--corpus_dir", default="", help="train.txt/eval.txt (default: build GCIDE)")
    p.add_argument("--task_dir", default="", help="train.tsv/eval.tsv (default: build WordNet)")
    p.add_argument("--train_words", type=int, default=1_500_000)
    p.add_argument("--train_rows", type=int, default=30_000)
    p.add_argument("--eval_rows", type=int, default=3_000)
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--modern_steps", type=int, default=2400)
    p.add_argument("--ft_steps", type=int, default=800)
    p.add_argument("--lrs", default="1e-4,5e-4")
    p.add_argument("--skip_bert", action="store_true", help="only the modern recipe")
    p.add_argument(
        "--modern_config",
        default="configs/modernbert_cpu.py",
        help="the modern recipe's config (CI's short run: configs/modernbert_smoke.py)",
    )
    p.add_argument("--ft_seq", type=int, default=64, help="fine-tuning sequence length")
    a = p.parse_args()
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"pretraining": {},
                                                                   "finetuning": {}}  # fmt: skip
    corpus, task, model = prepare_data(a, out)
    results.setdefault("unigram_baseline", unigram_baseline(corpus, model))
    flags = data_flags(corpus, model)
    modern_cfg, bert_cfg = a.modern_config, "configs/mini.py"
    modern_flags = [*flags, f"--config.num_train_steps={a.modern_steps}",
                    f"--config.optimizer.warmup_steps={max(a.modern_steps // 10, 1)}",
                    f"--config.eval_every_steps={max(a.modern_steps // 4, 1)}"]  # fmt: skip
    bert_base = [*flags, "--config.global_batch_size=32", "--config.dtype=float32",
                 "--config.data.max_seq_length=128", "--config.data.max_predictions_per_seq=20",
                 "--config.max_eval_batches=10", "--config.eval_batch_size=64",
                 "--config.optimizer.learning_rate=1e-3"]  # fmt: skip
    if not a.skip_bert and "bert_steps" not in results:  # Timed first, on an idle machine.
        ratio = step_time(modern_cfg, flags, out / "logs/bench_modern.txt") / step_time(
            bert_cfg, bert_base, out / "logs/bench_bert.txt"
        )
        results["bert_steps"] = max(int(a.modern_steps * ratio), 1)
    runs = {"modern": (modern_cfg, pretrain("modern", modern_cfg, modern_flags, out, results))}
    if not a.skip_bert:
        steps = results["bert_steps"]
        bert_flags = [*bert_base, f"--config.num_train_steps={steps}",
                      f"--config.optimizer.warmup_steps={max(steps // 10, 1)}",
                      f"--config.eval_every_steps={max(steps // 4, 1)}",
                      f"--config.checkpoint_every_steps={steps}"]  # fmt: skip
        runs["bert"] = (bert_cfg, pretrain("bert", bert_cfg, bert_flags, out, results))
    for lr in a.lrs.split(","):
        for name, (config, workdir) in runs.items():
            lr_flag = f"--config.optimizer.learning_rate={lr}"
            finetune(f"{name}_pretrained_lr{lr}", [f"--config.init_from={workdir}", lr_flag],
                     a, task, out, results)  # fmt: skip
            finetune(f"{name}_random_lr{lr}", [*random_init_flags(config, model), lr_flag],
                     a, task, out, results)  # fmt: skip
    save(out, results)
    print(report(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
