"""Fine-tuning a pretrained encoder to tag words (named entities, parts of speech, slots).

    python -m pretrain.finetune --config=configs/finetune_tokens.py --workdir=/tmp/ner \
        --config.init_from=/tmp/bert_smoke \
        --config.data.train_file=train.conll --config.data.eval_file=dev.conll

Files in CoNLL layout: one word per line with its label in the last whitespace-separated column,
a blank line between sentences, `-DOCSTART-` lines skipped; or `tfds:conll2003[:SPLIT]`.
Labels are strings (BIO / IOB2 for entities); the label of a word is learned at its first piece.
Sentences longer than a window are split into overlapping windows (`data.stride`), never cut.
Eval rows: eval_loss, eval_entity_f1 / _precision / _recall (exact span and type, micro, as
seqeval), eval_entity_f1_<TYPE>, eval_token_accuracy; WORKDIR/best keeps the best entity F1.
Recipe: BERT's (Devlin et al. 2019, CoNLL-2003): AdamW 5e-5, batch 32, 10% warmup.
"""

import ml_collections

from configs import finetune_common


def get_config() -> ml_collections.ConfigDict:
    """Token classification from CoNLL files or TFDS."""
    c = finetune_common.get_config("tagging")
    c.optimizer.learning_rate = 5e-5  # BERT's CoNLL-2003 setting.
    c.data.stride = 0  # Pieces between window starts of a long sentence; 0: half a window.
    c.data.tokens_key = "tokens"  # TFDS feature of the words (conll2003: tokens).
    c.data.label_key = "ner"  # TFDS feature of the labels (conll2003: ner, pos or chunks).
    c.lock()
    return c
