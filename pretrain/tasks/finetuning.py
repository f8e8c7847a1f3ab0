"""What every fine-tuning task shares: where its weights and tokenizer come from.

`config.init_from` is a pretraining workdir (newest checkpoint, its saved config, its
tokenizer). The architecture comes from that checkpoint (`ARCHITECTURE_FIELDS`; a value set in
the fine-tuning config must agree), and only the `encoder` subtree is read, straight into the
fine-tuning mesh's shardings (orbax partial restore: the pretraining heads and optimizer moments
stay on disk). Empty `init_from` trains the same architecture from random weights, with
`data.tokenizer_model`. WORKDIR/labels.json keeps the task's label set across restarts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from data_pipeline import files, vocab
from pretrain.models import lora
from pretrain.models.config import ARCHITECTURE_FIELDS, EncoderConfig
from pretrain.models.params import named_leaves
from pretrain.training import validation
from pretrain.training.checkpoint import Checkpointer
from pretrain.training.errors import CheckpointError, ConfigError, DataError
from pretrain.training.metrics import status
from pretrain.training.task import Batch, Sums, Task
from pretrain.training.workdir import (
    checkpoints_dir,
    latest_checkpoint,
    prepare_tokenizer,
    tokenizer_file,
)

LABELS_FILE = "labels.json"


def resolve_model_config(
    config: ml_collections.ConfigDict, vocab_size: int, pretrained: Mapping[str, Any] | None
) -> EncoderConfig:
    """config.model with the architecture filled in from the checkpoint's saved config.

    A field set in the fine-tuning config that disagrees with the checkpoint is a CheckpointError;
    unset fields without a checkpoint take EncoderConfig's defaults (BERT-base).
    """
    fields = dict(config.model.items())
    if pretrained is not None:
        saved = pretrained.get("model", {})
        for key in ARCHITECTURE_FIELDS:
            if saved.get(key) is None:
                continue
            if fields.get(key) is not None and fields[key] != saved[key]:
                raise CheckpointError(
                    f"config.model.{key}={fields[key]} but the checkpoint in {config.init_from} "
                    f"has {key}={saved[key]}: leave config.model.{key} unset to use the "
                    "checkpoint's, or init_from a checkpoint of that size."
                )
            fields[key] = saved[key]
    model_config = EncoderConfig.from_config(fields, vocab_size=vocab_size, dtype=config.dtype)
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise ConfigError(
            f"config.data.max_seq_length={config.data.max_seq_length} exceeds the model's "
            f"max_position_embeddings={model_config.max_position_embeddings}: lower it."
        )
    return model_config


def restore_pretrained(init_from: str, step: int, abstract: Mapping[str, Any]) -> dict[str, Any]:
    """The subtrees `abstract` names (e.g. {"encoder": ...}) of checkpoint `step`'s params, read
    straight into their shardings.

    Raises CheckpointError if a parameter is missing or its shape differs (another model size,
    or another tokenizer's vocabulary).
    """
    path = checkpoints_dir(init_from) / str(step) / "state"  # The "state" item of Checkpointer.
    saved = {
        name: tuple(m.shape)
        for name, m in named_leaves(ocp.PyTreeCheckpointHandler().metadata(path).tree).items()
    }
    for name, leaf in named_leaves({"params": abstract}).items():
        if name not in saved:
            raise CheckpointError(
                f"{path} has no parameter {name}: init_from must be a workdir of "
                "`pretrain.train` or `pretrain.import_hf` with an encoder of this architecture."
            )
        if saved[name] != tuple(leaf.shape):
            raise CheckpointError(
                f"{path}: {name} has shape {saved[name]} but the model expects "
                f"{tuple(leaf.shape)}; the checkpoint does not match its config or its tokenizer "
                f"({tokenizer_file(init_from)})."
            )
    checkpointer = Checkpointer(checkpoints_dir(init_from))
    try:
        return checkpointer.restore_params(step, dict(abstract))
    finally:
        checkpointer.close()


def _base_checkpoint(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[int, dict]:
    """(step, saved config) of init_from to start from: its newest, except for a LoRA run that
    resumes, whose adapters belong to the base step its checkpoints record."""
    ours = checkpoints_dir(workdir)
    if config.get("peft", {}).get("method") == "lora" and ours.is_dir():
        checkpointer = Checkpointer(ours)
        try:
            step = checkpointer.latest_step()
            record = checkpointer.read_config(step) if step is not None else {}
        finally:
            checkpointer.close()
        base = record.get("peft_base", {}).get("step")
        if base is not None:
            source = Checkpointer(checkpoints_dir(config.init_from))
            try:
                if base not in source.all_steps():
                    raise CheckpointError(
                        f"{config.init_from} no longer holds step {base}, the base checkpoint "
                        f"of the LoRA adapters in {workdir}: restore it or start a new workdir."
                    )
                return base, source.read_config(base)
            finally:
                source.close()
    return latest_checkpoint(config.init_from)


class FinetuningTask(Task):
    """A task whose encoder starts from `config.init_from` (or random weights)."""

    kind = "finetuning"
    tasks: tuple[str, ...] = ()  # The config.task values this class trains.
    export_head: str  # The Hugging Face class it exports to (pretrain/hf/convert.py heads).
    train_format: str  # What config.data.train_file holds, for the error when it is empty.

    @classmethod
    def for_model(
        cls, config: ml_collections.ConfigDict, model_config: EncoderConfig, labels: list[str]
    ) -> FinetuningTask:
        """The task without data: enough to build its model (export, evaluate, predict). This
        default suits a task with no label set; tasks with labels override it."""
        return cls(config, model_config, None)

    def export_labels(self) -> list[str] | None:
        """Class names by id for `id2label` (None: the head has no named classes)."""
        return None

    # The task's logits and its loss on them, apart: distillation (tasks/distillation.py)
    # compares the same logits with a teacher's. Tasks with other outputs override loss_sums.
    def forward(self, model: nnx.Module, batch: Batch, rngs: nnx.Rngs | None) -> jax.Array:
        """The task model's float32 logits of a batch; `rngs` None means deterministic."""
        raise NotImplementedError

    def hard_sums(self, logits: jax.Array, batch: Batch) -> Sums:
        """The loss sums of `forward`'s logits against the batch's targets."""
        raise NotImplementedError

    def loss_sums(self, model: nnx.Module, batch: Batch, rngs: nnx.Rngs | None) -> Sums:
        return self.hard_sums(self.forward(model, batch, rngs), batch)

    def soft_logits(self, logits: jax.Array) -> jax.Array:
        """`forward`'s logits with the axis of each predicted distribution last."""
        return logits

    def soft_weights(self, batch: Batch) -> jax.Array:
        """The weight of each distribution of `soft_logits` (its leading dims)."""
        return batch["example_weight"]

    # Evaluation and prediction on new files (pretrain/inference/session.py). `tokenizer` is
    # set by `build`, or by the session for a task made with `for_model`.
    tokenizer: Any = None

    def load_eval(self, path: str, batch_size: int) -> None:
        """Makes a labelled file (the task's training format) the eval data."""
        raise NotImplementedError

    def load_inputs(self, path: str, batch_size: int) -> None:
        """Makes unlabelled input (the task's prediction format) the eval data."""
        raise NotImplementedError

    def prediction_rows(self, outputs: dict[str, Any]) -> list[dict[str, Any]]:
        """One JSON-able dict per input example, in input order, from a pass's outputs."""
        raise NotImplementedError

    def report(self, row: dict[str, float], outputs: dict[str, Any], out_dir: epath.Path) -> str:
        """The markdown of report.md (per-class scores); may write figures into `out_dir`."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        validation.check_finetuning(config, cls.tasks)
        if not config.data.train_file.strip():
            raise ConfigError(f"config.data.train_file is empty: set it to {cls.train_format}.")

    @staticmethod
    def prepare(
        config: ml_collections.ConfigDict, workdir: epath.Path
    ) -> tuple[vocab.Tokenizer, int | None, dict | None]:
        """The run's tokenizer (copied into WORKDIR) and init_from's newest (step, config)."""
        source = config.data.tokenizer_model
        step, saved_config = None, None
        if config.init_from:
            step, saved_config = _base_checkpoint(config, workdir)
            source = str(tokenizer_file(config.init_from))
            given = config.data.tokenizer_model
            if given and epath.Path(given).read_bytes() != epath.Path(source).read_bytes():
                raise ConfigError(
                    f"config.data.tokenizer_model differs from {source}, the tokenizer the "
                    "checkpoint was trained with: leave data.tokenizer_model empty with init_from."
                )
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
        data_config = ml_collections.ConfigDict({"tokenizer_model": source})
        return prepare_tokenizer(data_config, workdir), step, saved_config

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model_config: EncoderConfig,
        pretrained_step: int | None,
        train: Any = None,
        evals: Any = None,
    ):
        """`train` / `evals`: the task's batch readers (None: a task built for its model only)."""
        self.config = config
        self.model_config = model_config
        self.pretrained_step = pretrained_step
        self.seq_len = config.data.max_seq_length
        self.train_data = train
        self.eval_data = evals
        if config.best_metric:  # The task's class attribute is its default.
            self.best_metric = config.best_metric
        if self.lora:
            self.frozen = lora.is_frozen  # Only adapters and the task head train.

    def initial_params(self, abstract_params: nnx.State) -> dict[str, Any] | None:
        if self.pretrained_step is None:
            status("Random init: config.init_from is empty.")
            return None
        # LoRA adapters are new: they keep their initializer's values.
        wanted: dict[str, Any] = {"encoder": abstract_params["encoder"].filter(
            nnx.Not(nnx.LoRAParam))}  # fmt: skip
        if "head" in abstract_params:
            # ModernBERT task heads start from the MLM head's transform, as in transformers
            # (both are `head.*` there).
            wanted["mlm_head"] = {"head": abstract_params["head"]}
        restored = restore_pretrained(self.config.init_from, self.pretrained_step, wanted)
        parts = "Encoder and head" if "mlm_head" in restored else "Encoder"
        status(f"{parts} restored from {self.config.init_from}, step {self.pretrained_step}.")
        out = {"encoder": nnx.to_pure_dict(restored["encoder"])}
        if "mlm_head" in restored:
            out["head"] = nnx.to_pure_dict(restored["mlm_head"]["head"])
        return out

    def checkpoint_record(self) -> dict[str, Any]:
        """The config with the architecture actually used filled in and, for LoRA, the base
        checkpoint the adapters belong to (its weights are not in this run's checkpoints)."""
        record = self.config.to_dict()
        record["model"].update(self.model_config.architecture())
        if self.lora:
            record["peft_base"] = {"init_from": self.config.init_from, "step": self.pretrained_step}
        return record

    @property
    def lora(self) -> bool:
        return self.config.get("peft", {}).get("method", "none") == "lora"

    def adapt(self, model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:
        """`model` with LoRA adapters on its encoder when `peft.method` is 'lora'."""
        if self.lora:
            p = self.config.peft
            targets = [t.strip() for t in p.targets.split(",") if t.strip()]
            lora.attach(model.encoder, self.model_config.arch, targets, rank=p.rank,
                        alpha=p.alpha, dropout=p.dropout, dtype=self.model_config.dtype,
                        rngs=rngs)  # fmt: skip
        return model

    def export_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The parameter tree as plain weights (LoRA adapters merged into their kernels)."""
        if not self.lora:
            return params
        return lora.merge(params, self.config.peft.alpha, self.config.peft.rank)


def load_labels(workdir: epath.Path, task: str) -> list[str] | None:
    """The label set an earlier start of this run saved, or None on a first start."""
    path = workdir / LABELS_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["task"] != task:
        raise DataError(
            f"{workdir} was fine-tuned with task={saved['task']!r}, not {task!r}: "
            "use a new --workdir."
        )
    return list(saved["labels"])


def save_labels(workdir: epath.Path, task: str, labels: list[str]) -> None:
    if jax.process_index() == 0 and not (workdir / LABELS_FILE).exists():
        files.write_text(
            workdir / LABELS_FILE, json.dumps({"task": task, "labels": labels}, indent=2) + "\n"
        )
