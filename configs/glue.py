"""The GLUE harness: BERT's fine-tuning recipe on every task, from one pretraining checkpoint.

    python -m pretrain.glue --init_from=/tmp/bert_base --workdir=/tmp/glue \
        [--tasks=cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte,wnli] [--data_dir=GLUE_DIR] \
        [--config.glue.learning_rates=2e-5,3e-5,5e-5] [--config.KEY=VALUE ...]

Every fine-tuning key of configs/finetune_classify.py applies to every run (data files, task and
learning rate are set per run). Recipe (Devlin et al. 2019): batch 32, sequences of 128, 3
epochs, learning rate the best dev score over {2e-5, 3e-5, 5e-5}, 10% warmup, dropout 0.1,
weight decay 0.01; evaluated after every epoch, the best epoch's dev score kept. Several seeds
(`glue.seeds`) add restarts; the table reports the best run per task, as the papers do.
"""

import ml_collections

from configs import finetune_classify


def get_config() -> ml_collections.ConfigDict:
    """Fine-tuning fields of every GLUE run, and the sweep."""
    c = finetune_classify.get_config()
    c.unlock()
    c.eval_batch_size = 128  # Dev sets are evaluated whole; the last batch padded and masked.
    c.log_every_steps = 100  # Train rows every this many steps.
    c.glue = ml_collections.ConfigDict()
    c.glue.learning_rates = "2e-5,3e-5,5e-5"  # Swept per task; the best dev score is reported.
    c.glue.seeds = "0"  # Restarts per learning rate (comma-separated seeds).
    c.glue.epochs = 3.0  # Passes over each task's training set.
    c.glue.max_steps = 0  # Cap on steps per run (0: none); for quick checks on a CPU.
    c.lock()
    return c
