"""ModernBERT-large shapes and recipe: 28 layers x 1024, 16 heads, GeGLU with 2624 per half.

    python -m pretrain.train --config=configs/modernbert_large.py \
        --workdir=gs://BUCKET/mbert_large --config.data.train_files=gs://BUCKET/built_packed_1024

Everything else as `configs/modernbert_base.py`, with ModernBERT-large's peak learning rate 5e-4.
"""

import ml_collections

from configs import modernbert_base


def get_config() -> ml_collections.ConfigDict:
    """ModernBERT-large: 28 x 1024, sequences of 1024, the modern recipe."""
    c = modernbert_base.get_config()
    c.model.num_hidden_layers = 28
    c.model.hidden_size = 1024
    c.model.num_attention_heads = 16
    c.model.intermediate_size = 2624
    c.optimizer.learning_rate = 5e-4
    return c
