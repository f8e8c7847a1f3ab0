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

from configs import default
from pretrain.models.config import ARCHITECTURE_FIELDS, EncoderConfig


def get_config() -> ml_collections.ConfigDict:
    """The fine-tuning config: BERT's GLUE recipe on a task from TSV files or TFDS."""
    c = ml_collections.ConfigDict()

    c.init_from = ""  # Pretraining workdir (newest checkpoint + tokenizer); empty: random init.
    c.task = "classification"  # 'classification' (string labels) | 'regression' (numeric).
    c.seed = 0  # Seeds the head's init, the data order and dropout.
    c.num_train_steps = 1000  # Optimizer steps (GLUE: ~3 epochs, e.g. SST-2 67k/32*3 = 6.3k).
    c.global_batch_size = 32  # Examples per optimizer step, all devices and microbatches.
    c.grad_accum_steps = 1  # Microbatches per step, accumulated inside the jitted step.
    c.log_every_steps = 50  # Train metrics row + progress line every this many steps.
    c.eval_every_steps = 200  # Full eval pass every this many steps and at the end (0: never).
    c.eval_batch_size = 64  # Examples per eval batch (the last one is padded and masked out).
    c.checkpoint_every_steps = 500  # Async orbax save every this many steps, and at the end.
    c.keep_checkpoints = 2  # Newest checkpoints kept in WORKDIR/checkpoints.
    # Metric that picks the checkpoint kept in WORKDIR/best (higher is better); empty:
    # eval_accuracy for classification, eval_pearson for regression.
    c.best_metric = ""
    c.dtype = "bfloat16"  # Compute dtype: 'bfloat16' | 'float32'. Parameters stay float32.
    c.max_bad_steps = 0  # Non-finite steps skipped (update dropped) before the run stops.
    c.prefetch_batches = 2  # Batches built and put on devices ahead of the step.
    c.classifier_dropout = 0.1  # Dropout on the pooled [CLS] vector before the output layer.

    c.data = ml_collections.ConfigDict()
    c.data.train_file = ""  # TSV path or tfds:NAME[:SPLIT] (split defaults to train).
    c.data.eval_file = ""  # Same; evaluated in full (empty: no eval, no best checkpoint).
    c.data.tokenizer_model = ""  # Random init only (init_from brings its own): .model/vocab.txt.
    c.data.max_seq_length = 128  # Tokens per example, [CLS] and [SEP]s included; longer ones cut.
    c.data.text_a_key = "sentence"  # TFDS feature of the first text (glue/sst2: sentence).
    c.data.text_b_key = ""  # TFDS feature of the second text (glue/mrpc: sentence2); empty: none.
    c.data.label_key = "label"  # TFDS feature of the label.
    c.data.labels = ""  # Comma-separated class names fixing the id order; empty: from train data.
    # TSV header row: True skips the first line, False keeps it; None detects one (and warns).
    c.data.has_header = config_dict.placeholder(bool)

    # Model: the fields of configs/default.py. Architecture fields are None (placeholders): taken
    # from the init_from checkpoint, or for random init BERT-base; set them to assert or choose.
    # Dropout, initializer (of the new head), attention_impl and remat_policy keep their values.
    c.model = default.model_config()
    c.model.unlock()
    defaults = EncoderConfig()
    for key in ARCHITECTURE_FIELDS:
        c.model[key] = config_dict.placeholder(type(getattr(defaults, key)))

    # Optimizer: the keys of configs/default.py with BERT's fine-tuning values.
    c.optimizer = default.optimizer_config()
    c.optimizer.unlock()
    c.optimizer.learning_rate = 2e-5  # Peak; BERT searched {5e-5, 3e-5, 2e-5} on GLUE.
    c.optimizer.warmup_steps = -1  # Linear warmup from 0; -1: warmup_fraction of the steps.
    c.optimizer.warmup_fraction = 0.1  # BERT's warmup_proportion.
    c.optimizer.layerwise_lr_decay = 1.0  # Each layer below the top gets this x the lr (1: off).

    # Mesh and logical-axis rules: as pretraining (configs/default.py).
    c.mesh = default.mesh_config()

    c.lock()
    return c
