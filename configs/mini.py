"""BERT-mini (L=4, H=256, A=4, I=1024; Turc et al. 2019), phase 1 at sequence length 128.

`configs/bert.py:mini` under the path it had before sizes became an argument:

    python -m pretrain.train --config=configs/mini.py --workdir=gs://BUCKET/bert_mini \
        --config.data.train_files='gs://BUCKET/corpus/*.txt'
"""

import ml_collections

from configs.bert import get_config as _bert


def get_config() -> ml_collections.ConfigDict:
    """BERT-mini: `configs/bert.py:mini`."""
    return _bert("mini")
