"""Knowledge distillation (Hinton et al. 2015) as a fine-tuning task of the one loop.

`--config.distill.teacher=FT_DIR` on any fine-tuning config trains the configured model (the
student: its own size, even the other architecture) on

    loss = hard_weight * (the task's loss on the gold labels)
         + soft_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

over the task's own logits (classification: per example; tagging: per scored word; QA: the
start and the end distribution over positions; regression: squared error between the scores).
The teacher is a frozen part of the task model (`model.teacher`, restored from FT_DIR's best
checkpoint by `initial_params` on every start), so it runs in the same jitted step, sharded by
the same logical axes, with no optimizer state, and is kept out of the student's checkpoints
(`Task.frozen`): the student's workdir is an ordinary fine-tuning workdir. `distilled(cls)` is
the task class: this mixin in front of the student's own task class.

`--config.task=distill --config.distill.teacher=PRETRAIN_DIR` on a pretraining config does the
same for masked LM (`distilled_pretraining`): the hard loss is the student's MLM (+ NSP) loss,
the soft one the KL between the teacher's and the student's MLM distributions at the masked
positions (weighted by masked_lm_weights). Both share `TeacherModel` (frozen, restored, unsaved).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import nnx, traverse_util

from pretrain.models.config import EncoderConfig
from pretrain.tasks.finetuning import FinetuningTask, load_labels
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import claim
from pretrain.training.checkpoint import Checkpointer
from pretrain.training.errors import ConfigError
from pretrain.training.metrics import status
from pretrain.training.task import Batch, Sums, Task
from pretrain.training.workdir import (
    QUANTIZED_MARKER,
    checkpoints_dir,
    finetuned_checkpoints,
    tokenizer_file,
)

TEACHER = "teacher"  # The task model's attribute, and the top of the teacher's parameter paths.
# Workdir kind of a teacher -> (what to give, where its checkpoints are).
TEACHER_KINDS = {
    "finetuning": ("a fine-tuning workdir of `pretrain.finetune`", finetuned_checkpoints),
    "pretraining": ("a pretraining workdir of `pretrain.train`", checkpoints_dir),
}


def is_teacher(names: tuple[str, ...]) -> bool:
    return bool(names) and names[0] == TEACHER


def saved_without_teacher(config: ml_collections.ConfigDict) -> bool:
    """Whether a checkpoint with this saved config came from a distilled run: its params are
    the student's alone, a pure dict (`Steps.saveable` of a task with frozen parameters)."""
    return bool(config.get("distill", {}).get("teacher"))


def soft_loss(student: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
    """Per distribution [...]: T^2 KL(softmax(teacher / T) || softmax(student / T)) over the
    last axis, in float32 (T^2 keeps its gradients on the hard loss's scale as T changes). One
    output (regression) has no distribution: the squared error between the two scores."""
    student, teacher = student.astype(jnp.float32), teacher.astype(jnp.float32)
    if student.shape[-1] == 1:
        return (student[..., 0] - teacher[..., 0]) ** 2
    log_p = jax.nn.log_softmax(teacher / temperature, axis=-1)
    log_q = jax.nn.log_softmax(student / temperature, axis=-1)
    return temperature**2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def soft_sum(student: jax.Array, teacher: jax.Array, weights: jax.Array, temperature: float
             ) -> jax.Array:  # fmt: skip
    """The weighted sum of `soft_loss` over [...] distributions, the teacher held constant; a
    weight-0 (padding) row adds 0 even where its value is not finite."""
    per_row = soft_loss(student, jax.lax.stop_gradient(teacher), temperature)
    return jnp.sum(jnp.where(weights > 0, weights * per_row, 0.0))


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A workdir to learn from: its checkpoint, saved config and labels (fine-tuning only)."""

    workdir: epath.Path
    directory: epath.Path  # Its best checkpoint's folder (else its newest).
    step: int
    config: ml_collections.ConfigDict
    labels: list[str]


def load_teacher(config: ml_collections.ConfigDict, kind: str = "finetuning") -> Teacher:
    """The teacher of `config.distill.teacher`, a workdir of `kind`, checked against the
    student's config and tokenizer (cheap: saved configs and files only); ConfigError naming
    any mismatch."""
    path = config.distill.teacher
    root = epath.Path(path)
    what, checkpoints = TEACHER_KINDS[kind]
    if not path or not root.is_dir():
        raise ConfigError(f"config.distill.teacher={path!r} does not exist: give {what}.")
    if (root / QUANTIZED_MARKER).exists():
        raise ConfigError(
            f"config.distill.teacher={path} is a quantized model: give the "
            "float32 workdir it was quantized from."
        )
    found = (claim.read_kind(root) or {}).get("kind")
    if found != kind:
        raise ConfigError(
            f"config.distill.teacher={path} is not a {kind} workdir ({found or 'no run'}): "
            f"give {what}."
        )
    directory = checkpoints(root)
    checkpointer = Checkpointer(directory)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise ConfigError(
                f"config.distill.teacher={path} holds no complete checkpoint: "
                f"finish its {kind} first."
            )
        saved = ml_collections.ConfigDict(checkpointer.read_config(step))
    finally:
        checkpointer.close()
    if kind == "finetuning":
        _check_finetuned(config, saved, path)
    _check_tokenizer(config, root)
    teacher_positions = saved.model.max_position_embeddings
    if config.data.max_seq_length > teacher_positions:
        raise ConfigError(
            f"config.data.max_seq_length={config.data.max_seq_length} exceeds the "
            f"teacher's max_position_embeddings={teacher_positions}: lower it."
        )
    if config.distill.get("init_layers", False):
        _check_layer_init(config, saved.model)
    labels = (load_labels(root, saved.task) or []) if kind == "finetuning" else []
    return Teacher(root, directory, step, saved, labels)


def _check_layer_init(config: ml_collections.ConfigDict, teacher: ml_collections.ConfigDict
                      ) -> None:  # fmt: skip
    """DistilBERT's init copies tensors: the same architecture and widths, no more layers."""
    if config.get("init_from"):
        raise ConfigError(
            "config.distill.init_layers and config.init_from both give the student's weights: "
            "keep one."
        )
    # As the models will be built (unset fields take EncoderConfig's defaults).
    student, teacher = (EncoderConfig.from_config(m, vocab_size=1, dtype=config.dtype)
                        for m in (config.model, teacher))  # fmt: skip
    for key in ("arch", "hidden_size", "intermediate_size", "num_attention_heads"):
        if getattr(student, key) != getattr(teacher, key):
            raise ConfigError(
                f"config.distill.init_layers copies the teacher's layers: the student's "
                f"model.{key}={getattr(student, key)} must be the teacher's "
                f"{getattr(teacher, key)}."
            )
    if student.num_hidden_layers > teacher.num_hidden_layers:
        raise ConfigError(
            f"config.distill.init_layers: the student's {student.num_hidden_layers} layers "
            f"exceed the teacher's {teacher.num_hidden_layers}."
        )


def layer_init(student: dict, teacher: dict, teacher_layers: int) -> dict:
    """DistilBERT's init of a student encoder (the pure-dict tree `student`, for its paths and
    depth) from a teacher encoder's: the same embeddings, pooler and norms, and student layer j
    from teacher layer j * L_teacher // L_student (every other one at half the depth, so layer
    0 stays layer 0 and ModernBERT's global layers land on global ones)."""
    paths = traverse_util.flatten_dict(student)
    student_layers = len(student.get("layers", {})) or 1
    source = traverse_util.flatten_dict(teacher)
    out = {}
    for path in paths:
        if path[0] == "layers":
            j = int(path[1])
            path_in_teacher = ("layers", type(path[1])(j * teacher_layers // student_layers),
                               *path[2:])  # fmt: skip
        else:
            path_in_teacher = path
        out[path] = source[path_in_teacher]
    return traverse_util.unflatten_dict(out)


def _check_finetuned(
    config: ml_collections.ConfigDict, saved: ml_collections.ConfigDict, path: str
) -> None:
    """A fine-tuned teacher: of the student's task, and fully fine-tuned."""
    if saved.task != config.task:
        raise ConfigError(
            f"config.distill.teacher={path} was fine-tuned for task={saved.task!r}, "
            f"not {config.task!r}: give a teacher of the same task."
        )
    if saved.get("peft", {}).get("method", "none") != "none":
        raise ConfigError(
            f"config.distill.teacher={path} is a LoRA run: give a fully "
            "fine-tuned teacher (peft.method='none')."
        )


def _check_tokenizer(config: ml_collections.ConfigDict, teacher: epath.Path) -> None:
    """Both read the same token ids only with the same tokenizer file."""
    init_from = config.get("init_from")
    ours = tokenizer_file(init_from) if init_from else config.data.tokenizer_model
    theirs = tokenizer_file(teacher)
    if not ours and init_from is None:  # Pretraining would train a tokenizer of its own.
        raise ConfigError(
            "config.data.tokenizer_model is empty: distill with the teacher's tokenizer, "
            f"--config.data.tokenizer_model={theirs}."
        )
    if not ours or not epath.Path(ours).exists():
        return  # The student's own checks name the missing tokenizer.
    if epath.Path(ours).read_bytes() != theirs.read_bytes():
        raise ConfigError(
            f"the student's tokenizer {ours} differs from the teacher's {theirs}: "
            "distill with the tokenizer the teacher was trained with."
        )


def check_distill_config(config: ml_collections.ConfigDict) -> None:
    d = config.distill
    if d.temperature <= 0 or d.soft_weight < 0 or d.hard_weight < 0:
        raise ConfigError(
            f"config.distill: temperature={d.temperature} must be > 0 and "
            f"soft_weight={d.soft_weight}, hard_weight={d.hard_weight} >= 0."
        )
    if d.soft_weight == d.hard_weight == 0:
        raise ConfigError(
            "config.distill: soft_weight and hard_weight are both 0: nothing "
            "would train; set soft_weight > 0."
        )


class TeacherModel:
    """Mixin of both distillations: the teacher as a frozen part of the task model, restored
    from its workdir on every start (no optimizer state, not in the student's checkpoints)."""

    teacher: Teacher

    def attach_teacher(self, teacher: Teacher) -> None:
        self.teacher = teacher
        student_frozen = self.frozen  # LoRA's, when the student uses adapters.
        self.frozen = lambda names: (
            is_teacher(names) or bool(student_frozen and student_frozen(names))
        )

    def teacher_task(self) -> Task:
        """The teacher's task without data, computing in the student run's dtype."""
        raise NotImplementedError

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        model = super().make_model(rngs)  # First: the student's init is the one it has alone.
        setattr(model, TEACHER, self.teacher_task().make_model(rngs))
        return model

    def initial_params(self, abstract_params: nnx.State) -> dict[str, Any]:
        out = super().initial_params(abstract_params) or {}
        checkpointer = Checkpointer(self.teacher.directory)
        try:
            restored = checkpointer.restore_params(self.teacher.step, abstract_params[TEACHER])
        finally:
            checkpointer.close()
        status(f"Teacher restored from {self.teacher.directory}, step {self.teacher.step}.")
        out[TEACHER] = nnx.to_pure_dict(restored)
        if self.config.distill.get("init_layers", False):
            student = layer_init(
                nnx.to_pure_dict(abstract_params["encoder"]), out[TEACHER]["encoder"],
                self.teacher.config.model.num_hidden_layers,
            )  # fmt: skip
            # Copies: the init donates what it is given, and a buffer may be donated once.
            out["encoder"] = jax.tree.map(jnp.copy, student)
            status("Student encoder initialized from the teacher's layers (DistilBERT).")
        return out

    soft_denominator = "soft"  # The `loss_weights` entry that divides `soft_sum`.

    def metrics(self, sums: Sums, weights: Sums) -> dict[str, jax.Array]:
        out = super().metrics(sums, weights)
        d = self.config.distill
        soft = sums["soft_sum"] / weights[self.soft_denominator]
        out["hard_loss"], out["soft_loss"] = out["loss"], soft
        out["loss"] = d.hard_weight * out["hard_loss"] + d.soft_weight * soft
        return out


class Distillation(TeacherModel, FinetuningTask):
    """Placed before the student's task class (see `distilled`); everything else is its."""

    student_class: type[FinetuningTask]  # The task class both were fine-tuned with.

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        super().check_config(config)
        if cls.forward is FinetuningTask.forward:
            raise ConfigError(
                f"config.task={config.task!r} has no logits to distill: "
                "leave config.distill.teacher empty."
            )
        check_distill_config(config)
        load_teacher(config)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, workdir: epath.Path) -> Distillation:
        task = super().build(config, workdir)
        teacher = load_teacher(config)
        if task.export_labels() != teacher.labels:
            raise ConfigError(
                f"the student's labels {task.export_labels()} differ from the "
                f"teacher's {teacher.labels} ({teacher.workdir}/labels.json): "
                "fine-tune both on the same label set."
            )
        task.attach_teacher(teacher)
        return task

    def teacher_task(self) -> FinetuningTask:
        saved = self.teacher.config
        model_config = EncoderConfig.from_config(
            saved.model, vocab_size=self.model_config.vocab_size, dtype=self.config.dtype
        )
        return self.student_class.for_model(saved, model_config, self.teacher.labels)

    def loss_weights(self, batch: Batch) -> Sums:
        return {
            **super().loss_weights(batch),
            "soft": jnp.maximum(self.soft_weights(batch).sum(), 1.0),
        }

    def loss_sums(self, model: nnx.Module, batch: Batch, rngs: nnx.Rngs | None) -> Sums:
        logits = self.forward(model, batch, rngs)
        sums = self.hard_sums(logits, batch)
        teacher = self.forward(getattr(model, TEACHER), batch, None)
        sums["soft_sum"] = soft_sum(
            self.soft_logits(logits), self.soft_logits(teacher), self.soft_weights(batch),
            self.config.distill.temperature,
        )  # fmt: skip
        return sums

    def checkpoint_record(self) -> dict[str, Any]:
        record = super().checkpoint_record()
        record["distill_teacher"] = {
            "workdir": str(self.teacher.workdir),
            "step": self.teacher.step,
        }
        return record


def distilled(task_cls: type[FinetuningTask]) -> type[FinetuningTask]:
    """`task_cls` trained against `config.distill.teacher`."""
    return type(
        f"Distilled{task_cls.__name__}", (Distillation, task_cls), {"student_class": task_cls}
    )


class PretrainingDistillation(TeacherModel, PretrainingTask):
    """Masked LM (+ NSP) on the data, plus the teacher's MLM distributions at the masked
    positions; evaluation is the student's own (MLM / NSP on the eval set)."""

    soft_denominator = "mlm"  # The soft loss is per masked position, as the MLM loss.

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        super().check_config(config)
        check_distill_config(config)
        load_teacher(config, "pretraining")

    @classmethod
    def build(
        cls, config: ml_collections.ConfigDict, workdir: epath.Path
    ) -> PretrainingDistillation:
        task = super().build(config, workdir)
        task.attach_teacher(load_teacher(config, "pretraining"))
        return task

    def teacher_task(self) -> PretrainingTask:
        task = PretrainingTask(self.teacher.config, self.model_config.vocab_size)
        task.model_config = EncoderConfig.from_config(
            self.teacher.config.model, vocab_size=self.model_config.vocab_size,
            dtype=self.config.dtype,
        )  # fmt: skip
        return task

    def loss_sums(self, model: nnx.Module, batch: Batch, rngs: nnx.Rngs | None) -> Sums:
        mlm_logits, nsp_logits = self._logits(model, batch, rngs)
        sums = self._loss_terms(mlm_logits, nsp_logits, batch)
        teacher, _ = self._logits(getattr(model, TEACHER), batch, None)
        sums["soft_sum"] = soft_sum(mlm_logits, teacher, batch["masked_lm_weights"],
                                    self.config.distill.temperature)  # fmt: skip
        return sums


def distilled_pretraining(
    task_cls: type[PretrainingTask] = PretrainingTask,
) -> type[PretrainingTask]:
    """`task_cls` (pretraining) trained against `config.distill.teacher` as well."""
    if task_cls is PretrainingTask:
        return PretrainingDistillation
    return type(f"Distilled{task_cls.__name__}", (PretrainingDistillation, task_cls), {})
