"""ModernBERT-base: `configs/modernbert.py:base` under the path it had before sizes became an
argument.

    python -m pretrain.train --config=configs/modernbert_base.py --workdir=gs://BUCKET/mbert_base \
        --config.data.train_files=gs://BUCKET/built_packed_1024
"""

import ml_collections

from configs.modernbert import get_config as _modernbert


def get_config() -> ml_collections.ConfigDict:
    """ModernBERT-base: `configs/modernbert.py:base`."""
    return _modernbert("base")
