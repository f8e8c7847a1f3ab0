"""The fields every fine-tuning config shares (configs/finetune_*.py add their task's data keys).

Defaults follow BERT's GLUE recipe (Devlin et al. 2019): AdamW, lr 2e-5, batch 32, 10% linear
warmup then linear decay, dropout 0.1, weight decay 0.01.
"""

import ml_collections
from ml_collections import config_dict

from configs import default
from pretrain.models.config import ARCHITECTURE_FIELDS, EncoderConfig


def get_config(task: str) -> ml_collections.ConfigDict:
    """The shared fields, unlocked, for `config.task = task`."""
    c = ml_collections.ConfigDict()

    c.init_from = ""  # Pretraining workdir (newest checkpoint + tokenizer); empty: random init.
    c.task = task  # What is trained: classification | regression | tagging | qa | retrieval.
    c.seed = 0  # Seeds the head's init, the data order and dropout.
    c.num_train_steps = 1000  # Optimizer steps (GLUE: ~3 epochs, e.g. SST-2 67k/32*3 = 6.3k).
    c.global_batch_size = 32  # Examples per optimizer step, all devices and microbatches.
    c.grad_accum_steps = 1  # Microbatches per step, accumulated inside the jitted step.
    c.log_every_steps = 50  # Train metrics row + progress line every this many steps.
    c.eval_every_steps = 200  # Full eval pass every this many steps and at the end (0: never).
    c.eval_batch_size = 64  # Examples per eval batch (the last one is padded and masked out).
    c.checkpoint_every_steps = 500  # Async orbax save every this many steps, and at the end.
    c.keep_checkpoints = 2  # Newest checkpoints kept in WORKDIR/checkpoints.
    # Metric that picks the checkpoint kept in WORKDIR/best (higher is better); empty: the
    # task's own (eval_accuracy, eval_pearson, eval_entity_f1, eval_f1, eval_ndcg_at_10).
    c.best_metric = ""
    c.dtype = "bfloat16"  # Compute dtype: 'bfloat16' | 'float32'. Parameters stay float32.
    c.max_bad_steps = 0  # Non-finite steps skipped (update dropped) before the run stops.
    c.prefetch_batches = 2  # Batches built and put on devices ahead of the step.
    c.classifier_dropout = 0.1  # Dropout before the output layer (BERT QA: none, as HF's).

    c.data = ml_collections.ConfigDict()
    c.data.train_file = ""  # Training examples: a file of the task's format, or tfds:NAME[:SPLIT].
    c.data.eval_file = ""  # Same; evaluated in full (empty: no eval, no best checkpoint).
    c.data.tokenizer_model = ""  # Random init only (init_from brings its own): .model/vocab.txt.
    c.data.max_seq_length = 128  # Tokens per example, [CLS] and [SEP]s included.

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

    # Parameter-efficient fine-tuning (LoRA, Hu et al. 2021; pretrain/models/lora.py).
    c.peft = ml_collections.ConfigDict()
    c.peft.method = "none"  # 'none': every weight trains | 'lora': adapters and task head only.
    c.peft.rank = 8  # r: the adapters' inner dimension.
    c.peft.alpha = 16.0  # The update is scaled by alpha / r.
    c.peft.dropout = 0.0  # Dropout on each adapter's input.
    # Adapted projections: query,key,value,output (attention), mlp_in, mlp_out (ModernBERT also
    # mlp_gate).
    c.peft.targets = "query,key,value,output,mlp_in,mlp_out"

    # Knowledge distillation (Hinton et al. 2015; pretrain/tasks/distillation.py): the model this
    # config describes (the student) also learns the teacher's temperature-softened outputs.
    c.distill = ml_collections.ConfigDict()
    # A fine-tuning workdir of the same task, tokenizer and labels (its best checkpoint); frozen,
    # never saved with the student. Empty: no distillation.
    c.distill.teacher = ""
    c.distill.temperature = 2.0  # T: both logits / T before the softmax; the KL is scaled by T^2.
    c.distill.soft_weight = 0.5  # Weight of T^2 KL(teacher || student) (regression: squared error).
    c.distill.hard_weight = 0.5  # Weight of the task's own loss on the gold labels.
    # DistilBERT's init: the student's encoder starts as the teacher's embeddings and every
    # (L_teacher / L_student)-th layer; needs the teacher's arch and widths, and no init_from.
    c.distill.init_layers = False

    # Mesh and logical-axis rules: as pretraining (configs/default.py).
    c.mesh = default.mesh_config()
    return c
