"""Fine-tunes a pretrained BERT on a classification (or regression) task.

    python -m pretrain.finetune --config=configs/finetune_classify.py --workdir=DIR \
        --config.init_from=PRETRAIN_DIR \
        --config.data.train_file=TRAIN.tsv --config.data.eval_file=EVAL.tsv \
        [--config.KEY=VALUE ...] \
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Resumes from the newest complete checkpoint in DIR/checkpoints; on SIGTERM saves and exits 0.
"""

from absl import app, flags
from ml_collections import config_flags

from pretrain import command, tasks
from pretrain.training import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Fine-tuning config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, labels and predictions."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    command.start(argv, takes_config=True)
    command.check_config_kind(_CONFIG.value, "pretrain.finetune")
    command.initialize_distributed()
    config, workdir = _CONFIG.value, _WORKDIR.value
    command.run_user_errors_as_one_line(lambda: loop.train(config, workdir, tasks.task_for(config)))


if __name__ == "__main__":
    app.run(main, flags_parser=command.parse_flags)
