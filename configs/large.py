"""BERT-large (L=24, H=1024, A=16, I=4096; Devlin et al. 2019), phase 1 at sequence length 128.

Point `data.train_files` at your corpus (BERT text format) or a `tfds:NAME` source:

    python -m pretrain.train --config=configs/large.py --workdir=gs://BUCKET/bert_large \
        --config.data.train_files='gs://BUCKET/corpus/*.txt' \
        --config.data.eval_files='gs://BUCKET/corpus_eval/*.txt'
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """BERT-large: model size from the reference table, the original BERT recipe otherwise."""
    c = default.get_config()
    c.num_train_steps = 1_000_000
    c.global_batch_size = 256
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 10_000

    c.model.num_hidden_layers = 24
    c.model.hidden_size = 1024
    c.model.num_attention_heads = 16
    c.model.intermediate_size = 4096
    return c
