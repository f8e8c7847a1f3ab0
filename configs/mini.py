"""BERT-mini (L=4, H=256, A=4, I=1024; Turc et al. 2019), phase 1 at sequence length 128.

Point `data.train_files` at your corpus (BERT text format) or a `tfds:NAME` source:

    python -m pretrain.train --config=configs/mini.py --workdir=gs://BUCKET/bert_mini \
        --config.data.train_files='gs://BUCKET/corpus/*.txt' \
        --config.data.eval_files='gs://BUCKET/corpus_eval/*.txt'
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """BERT-mini: model size from the reference table, the original BERT recipe otherwise."""
    c = default.get_config()
    c.num_train_steps = 100_000
    c.global_batch_size = 256
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 1_000

    c.model.num_hidden_layers = 4
    c.model.hidden_size = 256
    c.model.num_attention_heads = 4
    c.model.intermediate_size = 1024
    return c
