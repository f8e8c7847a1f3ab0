"""BERT-base (L=12, H=768, A=12, I=3072; Devlin et al. 2019), phase 1 at sequence length 128.

`configs/bert.py:base` under the path it had before sizes became an argument:

    python -m pretrain.train --config=configs/base.py --workdir=gs://BUCKET/bert_base \
        --config.data.train_files='gs://BUCKET/corpus/*.txt'
"""

import ml_collections

from configs.bert import get_config as _bert


def get_config() -> ml_collections.ConfigDict:
    """BERT-base: `configs/bert.py:base`."""
    return _bert("base")
