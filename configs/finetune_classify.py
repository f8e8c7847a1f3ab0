"""Fine-tuning a pretrained BERT on a sentence (or sentence-pair) classification task, GLUE-style.

    python -m pretrain.finetune --config=configs/finetune_classify.py --workdir=/tmp/ft \
        --config.init_from=/tmp/bert_smoke \
        --config.data.train_file=train.tsv --config.data.eval_file=dev.tsv

TSV rows are `label<TAB>text` or `label<TAB>text_a<TAB>text_b`; `tfds:NAME[:SPLIT]` reads a TFDS
dataset instead (e.g. `--config.data.train_file=tfds:glue/sst2 \
--config.data.eval_file=tfds:glue/sst2:validation --config.data.text_a_key=sentence`).
Defaults follow BERT's GLUE recipe (Devlin et al. 2019): AdamW, lr 2e-5, batch 32, 10% linear
warmup then linear decay, dropout 0.1, weight decay 0.01, sequences of 128 tokens.

With `init_from` set, the architecture is the checkpoint's: leave the model sizes below unset
(None), or set them to assert what you expect (a mismatch stops with one line). With `init_from`
empty, the same architecture is trained from random weights (the baseline to compare with): set
the sizes of the pretrained model you compare against (unset sizes are BERT-base) and
`data.tokenizer_model`. The config is locked: a misspelled override fails before anything runs.
"""

import ml_collections
from ml_collections import config_dict

from configs import finetune_common


def get_config() -> ml_collections.ConfigDict:
    """The fine-tuning config: BERT's GLUE recipe on a task from TSV files or TFDS."""
    c = finetune_common.get_config("classification")  # Or 'regression' (numeric labels).
    c.data.text_a_key = "sentence"  # TFDS feature of the first text (glue/sst2: sentence).
    c.data.text_b_key = ""  # TFDS feature of the second text (glue/mrpc: sentence2); empty: none.
    c.data.label_key = "label"  # TFDS feature of the label.
    c.data.labels = ""  # Comma-separated class names fixing the id order; empty: from train data.
    # TSV header row: True skips the first line, False keeps it; None detects one (and warns).
    c.data.has_header = config_dict.placeholder(bool)
    c.lock()
    return c
