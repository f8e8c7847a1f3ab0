"""BERT-large (L=24, H=1024, A=16, I=4096; Devlin et al. 2019), phase 1 at sequence length 128.

`configs/bert.py:large` under the path it had before sizes became an argument:

    python -m pretrain.train --config=configs/large.py --workdir=gs://BUCKET/bert_large \
        --config.data.train_files='gs://BUCKET/corpus/*.txt'
"""

import ml_collections

from configs.bert import get_config as _bert


def get_config() -> ml_collections.ConfigDict:
    """BERT-large: `configs/bert.py:large`."""
    return _bert("large")
