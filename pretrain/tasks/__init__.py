"""Tasks of the one training loop (see `pretrain/training/task.py` for what a task defines).

`FINETUNING_TASKS` maps `config.task` of `python -m pretrain.finetune` to its task class; adding
a fine-tuning task is one new module and one entry here. `task_for(config)` is the class a
config trains (distilled when it names a teacher); `pretraining_task(config)` the class a
pretraining config trains (`config.task`: 'mlm', or 'distill' from `config.distill.teacher`).
"""

from pretrain.tasks.classification import ClassificationTask
from pretrain.tasks.distillation import distilled, distilled_pretraining
from pretrain.tasks.finetuning import FinetuningTask
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.tasks.qa import QaTask
from pretrain.tasks.retrieval import RetrievalTask
from pretrain.tasks.tagging import TaggingTask

FINETUNING_TASKS = {
    name: task
    for task in (ClassificationTask, TaggingTask, QaTask, RetrievalTask)
    for name in task.tasks
}


def finetuning_task(name: str) -> type[FinetuningTask]:
    """The task class of `config.task`; ConfigError naming the choices for anything else."""
    from data_pipeline.errors import ConfigError

    if name not in FINETUNING_TASKS:
        raise ConfigError(
            f"config.task={name!r} is not a fine-tuning task: use one of "
            f"{', '.join(sorted(FINETUNING_TASKS))}."
        )
    return FINETUNING_TASKS[name]


def task_for(config) -> type[FinetuningTask]:
    """The task class a fine-tuning config trains: its task's, distilled when the config names
    a teacher (`config.distill.teacher`)."""
    task = finetuning_task(config.task)
    return distilled(task) if config.get("distill", {}).get("teacher") else task


PRETRAINING_TASKS = ("mlm", "distill")


def pretraining_task(
    config, task_cls: type[PretrainingTask] = PretrainingTask
) -> type[PretrainingTask]:
    """The task class a pretraining config trains; configs older than `config.task` are 'mlm'."""
    from data_pipeline.errors import ConfigError

    name = config.get("task", "mlm")
    if name not in PRETRAINING_TASKS:
        raise ConfigError(
            f"config.task={name!r} is not a pretraining task: use one of "
            f"{', '.join(PRETRAINING_TASKS)}."
        )
    return distilled_pretraining(task_cls) if name == "distill" else task_cls
