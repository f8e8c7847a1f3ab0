"""Evaluates a fine-tuned model on a labelled file.

    python -m pretrain.evaluate --workdir=FT_DIR --eval_file=FILE [--step=N] [--mesh=-1,1,1]

FILE is in the task's training format (TSV, CoNLL, SQuAD JSON, or tfds:NAME[:SPLIT]). Uses the
best checkpoint (FT_DIR/best), else the newest, or --step. Prints one JSON object of the task's
metrics (the names of its eval rows) as the last stdout line and writes `report.md` (per-class
precision / recall / F1 / support) and, for classification, `confusion_matrix.png` into
--report_dir (default: FT_DIR/eval_<file name>).
"""

import os

from absl import flags
from etils import epath

from pretrain import command
from pretrain.inference import session as session_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A `pretrain.finetune` workdir.")
_EVAL_FILE = flags.DEFINE_string("eval_file", None, "Labelled examples in the task's format.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: best, else newest).")
_MESH = flags.DEFINE_string("mesh", "-1,1,1", "Devices along data,fsdp,tensor (-1: the rest).")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "Where report.md goes.")
flags.mark_flags_as_required(["workdir", "eval_file"])


def _evaluate() -> None:
    session = session_lib.open_session(_WORKDIR.value, _STEP.value, _MESH.value)
    row, outputs = session_lib.run_evaluation(session, _EVAL_FILE.value)
    name = os.path.basename(_EVAL_FILE.value.rstrip("/")).replace(":", "_") or "eval"
    out_dir = epath.Path(_REPORT_DIR.value or os.path.join(_WORKDIR.value, f"eval_{name}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{_EVAL_FILE.value}, step {session.step} of {_WORKDIR.value}"
    report = session.task.report(row, outputs, out_dir).replace("# Evaluation", f"# {title}", 1)
    (out_dir / "report.md").write_text(report)
    print(f"Wrote {out_dir / 'report.md'}")
    print(session_lib.json_row(row))


if __name__ == "__main__":
    command.run(_evaluate, distributed=True)
