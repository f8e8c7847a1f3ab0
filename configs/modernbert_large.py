"""ModernBERT-large: `configs/modernbert.py:large` under the path it had before sizes became an
argument.

    python -m pretrain.train --config=configs/modernbert_large.py \
        --workdir=gs://BUCKET/mbert_large \
        --config.data.train_files=gs://BUCKET/built_packed_1024
"""

import ml_collections

from configs.modernbert import get_config as _modernbert


def get_config() -> ml_collections.ConfigDict:
    """ModernBERT-large: `configs/modernbert.py:large`."""
    return _modernbert("large")
