"""Fine-tunes a pretraining checkpoint on GLUE and writes the dev table.

    python -m pretrain.glue --init_from=PRETRAIN_DIR --workdir=DIR \
        [--tasks=cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte,wnli] [--data_dir=GLUE_DIR] \
        [--config=configs/glue.py] [--config.KEY=VALUE ...]

Data: `tfds:glue/*` (prepared with `tfds build glue`), or with --data_dir GLUE's own download
layout (GLUE_DIR/SST-2/train.tsv, dev.tsv, ...). Writes DIR/glue.json (task -> dev scores, and
the average) and DIR/glue.md (the leaderboard layout and every run); rerun the same command to
resume. The recipe is in configs/glue.py; pretrain/harness/glue.py has the details.
"""

from absl import app, flags
from ml_collections import config_flags

from pretrain import command
from pretrain.harness import glue

_CONFIG = config_flags.DEFINE_config_file("config", "configs/glue.py", "GLUE config file.")
_INIT_FROM = flags.DEFINE_string("init_from", None, "Pretraining workdir to fine-tune from.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the runs and the table.")
_TASKS = flags.DEFINE_string("tasks", "cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte,wnli", "GLUE tasks.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "GLUE download folder (default: TFDS).")
flags.mark_flags_as_required(["init_from", "workdir"])


def main(argv: list[str]) -> None:
    command.start(argv)
    command.initialize_distributed()
    command.run_user_errors_as_one_line(
        lambda: glue.run_glue(
            _CONFIG.value, _INIT_FROM.value, _WORKDIR.value, _TASKS.value, _DATA_DIR.value
        )  # fmt: skip
    )


if __name__ == "__main__":
    app.run(main, flags_parser=command.parse_flags)
