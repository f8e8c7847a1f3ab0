"""Pretrains BERT (masked LM + next-sentence prediction).

    python -m pretrain.train --config=configs/smoke.py --workdir=/tmp/bert_smoke \
        [--config.num_train_steps=1000 ...] \
        [--config.task=distill --config.distill.teacher=PRETRAIN_DIR] \
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Resumes from the newest complete checkpoint in WORKDIR/checkpoints; on SIGTERM saves and exits 0.
"""

from absl import app, flags
from ml_collections import config_flags

from pretrain import command, tasks
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pretraining config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, tokenizer.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str], task_cls: type[PretrainingTask] = PretrainingTask) -> None:
    """The command; `task_cls` lets a test run the same command with a subclass of the task."""
    command.start(argv, takes_config=True)
    command.check_config_kind(_CONFIG.value, "pretrain.train")
    command.initialize_distributed()
    config = _CONFIG.value
    command.run_user_errors_as_one_line(
        lambda: loop.train(config, _WORKDIR.value, tasks.pretraining_task(config, task_cls))
    )


if __name__ == "__main__":
    app.run(main, flags_parser=command.parse_flags)
