"""BERT-small (L=4, H=512, A=8, I=2048; Turc et al. 2019), phase 1 at sequence length 128.

`configs/bert.py:small` under the path it had before sizes became an argument:

    python -m pretrain.train --config=configs/small.py --workdir=gs://BUCKET/bert_small \
        --config.data.train_files='gs://BUCKET/corpus/*.txt'
"""

import ml_collections

from configs.bert import get_config as _bert


def get_config() -> ml_collections.ConfigDict:
    """BERT-small: `configs/bert.py:small`."""
    return _bert("small")
