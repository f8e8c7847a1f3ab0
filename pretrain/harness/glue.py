"""Turns a pretraining checkpoint into the GLUE table: `python -m pretrain.glue` runs this.

For each task, every (learning rate, seed) of `config.glue` is one fine-tuning run of the one
loop (`pretrain.finetune`'s library call) in WORKDIR/runs/<task>/lr<lr>_seed<seed>, evaluated on
the dev set after every epoch; the best epoch's checkpoint (its WORKDIR/best) gives the run's
dev scores (MNLI's mismatched dev set is evaluated on it afterwards, `pretrain.evaluate`'s
library call). The best run per task, by the task's first metric, goes into WORKDIR/glue.json
and WORKDIR/glue.md.

Resuming: a finished run leaves `result.json` in its folder and is never redone; a run cut off
mid-way resumes from its checkpoints. Compilation: the learning rate and the seed are state, not
constants of the compiled step (`pretrain/training/optimizer.py`, `steps.TrainState`), and a
persistent XLA cache is kept in WORKDIR/xla_cache, so the runs of one task compile their train
and eval steps once.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import ml_collections

from data_pipeline.tasks.examples import read_examples
from pretrain.harness.glue_tasks import GlueTask, convert, parse_tasks, tfds_specs
from pretrain.inference import session as session_lib
from pretrain.tasks.classification import ClassificationTask
from pretrain.training import loop
from pretrain.training.metrics import status

RESULT_FILE = "result.json"


def _floats(spec: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        from data_pipeline.errors import ConfigError

        raise ConfigError(f"config.glue.{what}={spec!r}: give comma-separated numbers.")
    return values


def _sources(task: GlueTask, data_dir: str | None, workdir: str) -> dict[str, str]:
    if data_dir:
        return convert(data_dir, task, os.path.join(workdir, "data", task.name))
    return tfds_specs(task)


def _run_config(base: ml_collections.ConfigDict, task: GlueTask, sources: dict[str, str],
                init_from: str, lr: float, seed: int, train_size: int):  # fmt: skip
    """The fine-tuning config of one run (a ConfigDict)."""
    config = ml_collections.ConfigDict(base.to_dict())  # A copy, unlocked.
    del config["glue"]
    g = base.glue
    steps_per_epoch = max(math.ceil(train_size / config.global_batch_size), 1)
    steps = max(math.ceil(g.epochs * steps_per_epoch), 1)
    if g.max_steps:
        steps = min(steps, int(g.max_steps))
    config.init_from = init_from
    config.task = "regression" if task.regression else "classification"
    config.best_metric = task.metrics[0]
    config.seed = seed
    config.optimizer.learning_rate = lr
    config.num_train_steps = steps
    config.eval_every_steps = config.checkpoint_every_steps = min(steps_per_epoch, steps)
    config.data.train_file = sources["train"]
    config.data.eval_file = sources[task.dev[0][0]]
    config.data.text_a_key, config.data.text_b_key = task.text_a, task.text_b
    config.data.label_key = "label"
    config.data.has_header = False  # Converted TSVs have none; TFDS never.
    return config


def _best_row(run_dir: str, metric: str) -> dict[str, float]:
    rows = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8")]
    evals = [r for r in rows if metric in r]
    return max(evals, key=lambda r: (r[metric], -r["step"]))


def run_one(config: ml_collections.ConfigDict, task: GlueTask, sources: dict[str, str],
            run_dir: str) -> dict[str, Any]:  # fmt: skip
    """Fine-tunes one (task, lr, seed) and returns its dev scores (cached in result.json)."""
    done = os.path.join(run_dir, RESULT_FILE)
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    loop.train(config, run_dir, ClassificationTask)
    best = _best_row(run_dir, task.metrics[0])
    suffix = task.dev[0][0]
    scores = {f"{k}{suffix}": best[k] for k in task.metrics}
    for other, _, _ in task.dev[1:]:  # MNLI mismatched, on the best checkpoint.
        session = session_lib.open_session(run_dir)
        row, _ = session_lib.run_evaluation(session, sources[other])
        scores.update({f"{k}{other}": row[k] for k in task.metrics})
    result = {"task": task.name, "learning_rate": config.optimizer.learning_rate,
              "seed": config.seed, "step": best["step"], "scores": scores}  # fmt: skip
    if jax.process_index() == 0:
        with open(done + ".tmp", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        os.replace(done + ".tmp", done)
    return result


def task_score(scores: dict[str, float]) -> float:
    """The leaderboard's task score: the mean of its numbers, in points."""
    return 100.0 * sum(scores.values()) / len(scores)


def run_glue(config: ml_collections.ConfigDict, init_from: str, workdir: str, tasks: str,
             data_dir: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Runs the sweep of every task and writes WORKDIR/glue.json and glue.md."""
    chosen = parse_tasks(tasks)
    lrs = _floats(config.glue.learning_rates, "learning_rates")
    seeds = [int(s) for s in _floats(config.glue.seeds, "seeds")]
    os.makedirs(workdir, exist_ok=True)
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    table: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    for task in chosen:
        sources = _sources(task, data_dir, workdir)
        base = ml_collections.ConfigDict(config.to_dict())
        base.data.text_a_key, base.data.text_b_key = task.text_a, task.text_b
        train_size = len(read_examples(sources["train"], base.data))
        results = []
        for lr in lrs:
            for seed in seeds:
                run_dir = os.path.join(workdir, "runs", task.name, f"lr{lr:g}_seed{seed}")
                run_config = _run_config(config, task, sources, init_from, lr, seed, train_size)
                status(f"GLUE {task.name}: lr {lr:g}, seed {seed} ({run_config.num_train_steps} "
                       "steps)")  # fmt: skip
                results.append(run_one(run_config, task, sources, run_dir))
        runs += results
        main = f"{task.metrics[0]}{task.dev[0][0]}"
        best = max(results, key=lambda r: r["scores"][main])
        table[task.name] = {
            **best["scores"], "score": task_score(best["scores"]),
            "learning_rate": best["learning_rate"], "seed": best["seed"],
        }  # fmt: skip
        write(workdir, table, runs, chosen)
    return table


def write(workdir: str, table: dict[str, Any], runs: list[dict], tasks: list[GlueTask]) -> None:
    """glue.json (task -> dev scores, and the average) and glue.md (the leaderboard layout)."""
    if jax.process_index() != 0:
        return
    average = sum(row["score"] for row in table.values()) / max(len(table), 1)
    with open(os.path.join(workdir, "glue.json"), "w", encoding="utf-8") as f:
        json.dump({**table, "average": average}, f, indent=1)
    header, cells = [], []
    for task in tasks:
        if task.name not in table:
            continue
        row = table[task.name]
        for suffix, _, _ in task.dev:
            header.append(task.title + suffix)
            numbers = [100 * row[f"{m}{suffix}"] for m in task.metrics]
            cells.append("/".join(f"{x:.1f}" for x in numbers))
    lines = [
        "# GLUE dev", "", "| " + " | ".join([*header, "Average"]) + " |",
        "|" + "---|" * (len(header) + 1), "| " + " | ".join([*cells, f"{average:.1f}"]) + " |",
        "", "Best run per task (learning rate, seed); every run:", "",
        "| task | learning rate | seed | best epoch step | dev scores |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for r in runs:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in r["scores"].items())
        lines.append(f"| {r['task']} | {r['learning_rate']:g} | {r['seed']} | {r['step']} | "
                     f"{scores} |")  # fmt: skip
    with open(os.path.join(workdir, "glue.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
