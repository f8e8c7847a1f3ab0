"""BERT at every size of the reference table, phase 1 at sequence length 128; pick one by argument.

    python -m pretrain.train --config=configs/bert.py:base --workdir=gs://BUCKET/bert_base \
        --config.data.train_files='gs://BUCKET/corpus/*.txt' \
        --config.data.eval_files='gs://BUCKET/corpus_eval/*.txt'

Sizes: tiny | mini | small | medium | base | large (Devlin et al. 2019; Turc et al. 2019);
no argument is base. Point `data.train_files` at your corpus (BERT text format) or a
`tfds:NAME` source. `configs/{mini,small,base,large}.py` are this file at one size.
"""

import ml_collections

from configs import default

# Model size: (num_hidden_layers, hidden_size, num_attention_heads, intermediate_size).
SIZES = {
    "tiny": (2, 128, 2, 512),  # Turc et al. 2019, 4.4M parameters.
    "mini": (4, 256, 4, 1024),  # Turc et al. 2019, 11.3M.
    "small": (4, 512, 8, 2048),  # Turc et al. 2019, 29M.
    "medium": (8, 512, 8, 2048),  # Turc et al. 2019, 41M.
    "base": (12, 768, 12, 3072),  # Devlin et al. 2019, 110M.
    "large": (24, 1024, 16, 4096),  # Devlin et al. 2019, 340M.
}
# Recipe: (num_train_steps, learning_rate, warmup_steps); batch 256 sequences at every size.
# The original BERT recipe for base and large; a shorter run at a higher rate for the small ones.
_SMALL_RECIPE = (100_000, 5e-4, 1_000)
_ORIGINAL_RECIPE = (1_000_000, 1e-4, 10_000)
RECIPES = {
    "tiny": _SMALL_RECIPE,
    "mini": _SMALL_RECIPE,
    "small": _SMALL_RECIPE,
    "medium": _SMALL_RECIPE,
    "base": _ORIGINAL_RECIPE,
    "large": _ORIGINAL_RECIPE,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """BERT at size `arg` (the text after ':' in --config=configs/bert.py:SIZE; default base)."""
    size = arg or "base"
    if size not in SIZES:
        raise ValueError(f"unknown BERT size {size!r}: use one of {', '.join(SIZES)}.")
    c = default.get_config()
    c.num_train_steps, c.optimizer.learning_rate, c.optimizer.warmup_steps = RECIPES[size]
    c.global_batch_size = 256
    m = c.model
    m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.intermediate_size = SIZES[size]
    return c
