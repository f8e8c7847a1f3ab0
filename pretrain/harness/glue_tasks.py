"""The nine GLUE tasks (Wang et al. 2019): where their data is, and how each is scored.

Data comes from TFDS (`tfds:glue/<name>`) or from a folder in GLUE's own download layout
(`GLUE_DIR/SST-2/train.tsv`, `dev.tsv`; MNLI `dev_matched.tsv` / `dev_mismatched.tsv`), whose
files are converted to this project's `label<TAB>text_a[<TAB>text_b]` TSVs (rows with a missing
field, present in QQP, are skipped and counted). Scores are those of the GLUE leaderboard:
Matthews correlation for CoLA, Pearson / Spearman for STS-B, F1 / accuracy for MRPC and QQP,
matched / mismatched accuracy for MNLI, accuracy for the rest; a task's score is the mean of its
numbers, the GLUE score the mean over tasks.
"""

from __future__ import annotations

import dataclasses
import os

from data_pipeline import files
from data_pipeline.errors import ConfigError, DataError, MissingInputError


@dataclasses.dataclass(frozen=True)
class GlueTask:
    name: str  # As in --tasks.
    title: str  # Leaderboard column.
    folder: str  # Folder in GLUE's download layout.
    text_a: str  # TFDS feature and GLUE TSV column of the first text.
    text_b: str  # ... of the second text ('' for single sentences).
    label: str  # GLUE TSV column of the label (TFDS: 'label').
    metrics: tuple[str, ...]  # Eval row keys, leaderboard order; the first picks the best run.
    regression: bool = False
    # Dev sets: leaderboard suffix -> (TFDS split, GLUE file).
    dev: tuple[tuple[str, str, str], ...] = (("", "validation", "dev.tsv"),)


TASKS = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", "CoLA", "sentence", "", "label", ("eval_mcc",)),
        GlueTask("sst2", "SST-2", "SST-2", "sentence", "", "label", ("eval_accuracy",)),
        GlueTask("mrpc", "MRPC", "MRPC", "sentence1", "sentence2", "Quality",
                 ("eval_f1", "eval_accuracy")),
        GlueTask("stsb", "STS-B", "STS-B", "sentence1", "sentence2", "score",
                 ("eval_pearson", "eval_spearman"), regression=True),
        GlueTask("qqp", "QQP", "QQP", "question1", "question2", "is_duplicate",
                 ("eval_f1", "eval_accuracy")),
        GlueTask("mnli", "MNLI", "MNLI", "premise", "hypothesis", "gold_label",
                 ("eval_accuracy",), dev=(("-m", "validation_matched", "dev_matched.tsv"),
                                          ("-mm", "validation_mismatched", "dev_mismatched.tsv"))),
        GlueTask("qnli", "QNLI", "QNLI", "question", "sentence", "label", ("eval_accuracy",)),
        GlueTask("rte", "RTE", "RTE", "sentence1", "sentence2", "label", ("eval_accuracy",)),
        GlueTask("wnli", "WNLI", "WNLI", "sentence1", "sentence2", "label", ("eval_accuracy",)),
    )
}  # fmt: skip
# GLUE's TSVs name some columns differently from TFDS.
_TSV_COLUMNS = {
    "mrpc": ("#1 String", "#2 String"),
    "mnli": ("sentence1", "sentence2"),
}
_COLA_COLUMNS = ("source", "label", "original", "sentence")  # CoLA's files have no header row.


def parse_tasks(spec: str) -> list[GlueTask]:
    names = [t.strip().lower().replace("-", "") for t in spec.split(",") if t.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ConfigError(f"--tasks={spec!r}: choose among {','.join(TASKS)}.")
    return [TASKS[n] for n in dict.fromkeys(names)]


def _rows(path: str, task: GlueTask) -> tuple[list[tuple[str, ...]], int]:
    """(label, text_a[, text_b]) rows of a GLUE TSV, and how many malformed rows were skipped."""
    if not os.path.isfile(path):
        raise MissingInputError(f"{path} not found: --data_dir must hold GLUE's folders "
                                f"({task.folder}/train.tsv, ...).")  # fmt: skip
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n").split("\t") for line in f if line.strip()]
    header = list(_COLA_COLUMNS) if task.name == "cola" else lines.pop(0)
    a_name, b_name = _TSV_COLUMNS.get(task.name, (task.text_a, task.text_b))
    label_name = header[-1] if task.name == "mnli" else task.label
    wanted = [label_name, a_name] + ([b_name] if task.text_b else [])
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} in its header {header}: is it "
                        f"GLUE's {task.folder} file?")  # fmt: skip
    index = [header.index(c) for c in wanted]
    rows, skipped = [], 0
    for fields in lines:
        if len(fields) != len(header) or any(not fields[i].strip() for i in index):
            skipped += 1
            continue
        rows.append(tuple(" ".join(fields[i].split()) for i in index))
    return rows, skipped


def convert(data_dir: str, task: GlueTask, out_dir: str) -> dict[str, str]:
    """Writes the task's GLUE files as this project's TSVs into `out_dir`; returns
    {'train': path, <dev suffix>: path, ...}. Skipped rows are reported on stderr."""
    os.makedirs(out_dir, exist_ok=True)
    sources = [("train", "train.tsv")] + [(suffix, name) for suffix, _, name in task.dev]
    written = {}
    for key, name in sources:
        rows, skipped = _rows(os.path.join(data_dir, task.folder, name), task)
        if not rows:
            raise DataError(f"{os.path.join(data_dir, task.folder, name)} holds no examples.")
        if skipped:
            print(f"glue: {task.folder}/{name}: skipped {skipped} malformed rows")
        path = os.path.join(out_dir, f"{key or 'dev'}.tsv")
        files.write_text(path, "".join("\t".join(r) + "\n" for r in rows))
        written[key] = path
    return written


def tfds_specs(task: GlueTask) -> dict[str, str]:
    """{'train': tfds spec, <dev suffix>: tfds spec, ...}."""
    specs = {"train": f"tfds:glue/{task.name}:train"}
    specs.update({suffix: f"tfds:glue/{task.name}:{split}" for suffix, split, _ in task.dev})
    return specs
