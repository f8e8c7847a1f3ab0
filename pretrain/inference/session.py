"""A fine-tuned model ready to run: `pretrain.evaluate` and `pretrain.predict` use this.

`open_session(workdir)` reads a fine-tuning workdir: its best checkpoint (WORKDIR/best) or the
newest (or `--step`), the config saved with it, its tokenizer and label set; it builds the task
model, jits the task's eval step on a mesh (`--mesh`, default: data parallel over every device)
and restores only the parameters into that mesh's shardings. A batch goes through the very step
fine-tuning evaluated with, so `predict` gives the eval pass's predictions on the same examples.
A quantized workdir (`quantized.py`) runs its int8 model through the same eval step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from data_pipeline import vocab
from data_pipeline.errors import ConfigError
from pretrain import tasks
from pretrain.inference import quantized
from pretrain.models.config import EncoderConfig
from pretrain.tasks import distillation
from pretrain.tasks.finetuning import FinetuningTask, load_labels
from pretrain.training import claim, sharding, steps
from pretrain.training.checkpoint import Checkpointer
from pretrain.training.evaluation import Feed, evaluate
from pretrain.training.optimizer import make_optimizer
from pretrain.training.workdir import finetuned_checkpoints, tokenizer_file


@dataclasses.dataclass
class Session:
    task: FinetuningTask
    config: ml_collections.ConfigDict
    step: int
    eval_step: Any
    params: Any
    feed: Feed


def make_mesh(mesh_flag: str, config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The mesh of a `--mesh=data,fsdp,tensor` flag (-1: the rest of the devices)."""
    try:
        data, fsdp, tensor = (int(x) for x in mesh_flag.split(","))
    except ValueError:
        raise ConfigError(f"--mesh={mesh_flag!r}: give three integers, data,fsdp,tensor.") from None
    mesh_config = ml_collections.ConfigDict(dict(config.mesh))
    mesh_config.data, mesh_config.fsdp, mesh_config.tensor = data, fsdp, tensor
    devices = jax.devices()
    if -1 not in (data, fsdp, tensor) and data * fsdp * tensor < len(devices):
        devices = devices[: data * fsdp * tensor]  # e.g. export's 1,1,1 on a many-device host.
    return sharding.create_mesh(mesh_config, devices)


def open_session(workdir: str, step: int | None = None, mesh: str = "-1,1,1") -> Session:
    """The fine-tuned (or quantized) model of `workdir` on a mesh, ready for batches (see the
    docstring)."""
    root = epath.Path(workdir)
    kind = claim.read_kind(workdir) or {}
    if kind.get("kind") not in (None, "finetuning", quantized.KIND):
        raise ConfigError(
            f"{workdir} is a {kind['kind']} workdir: evaluate, predict and quantize take a "
            "workdir of `pretrain.finetune`."
        )
    if quantized.is_quantized(root):
        if step is not None:
            raise ConfigError(f"{workdir} is quantized from one step: leave --step unset.")
        config, step, activations = quantized.read_record(root)
        task, device_mesh, rules = _task(root, config, mesh)
        graphdef, params = quantized.restore(root, task, device_mesh, activations)
        eval_step = jax.jit(functools.partial(
            steps.eval_step, task=task, graphdef=graphdef,
            activation_sharding=sharding.batch_sharding(device_mesh, rules),
        ))  # fmt: skip
    else:
        config, step, task, device_mesh, rules, eval_step, params = _restore(root, step, mesh)
    data_parallel = sharding.data_parallel_size(device_mesh, rules)
    batch_size = math.ceil(config.eval_batch_size / data_parallel) * data_parallel
    config.unlock()
    config.eval_batch_size = batch_size
    return Session(task, config, step, eval_step, params, Feed(device_mesh, rules, batch_size))


def _restore_params(checkpointer: Checkpointer, step: int, jitted: steps.Steps,
                    config: ml_collections.ConfigDict) -> Any:  # fmt: skip
    """The checkpoint's params, as `jitted.eval_step` takes them (but LoRA's base)."""
    if not distillation.saved_without_teacher(config):
        return checkpointer.restore_params(step, jitted.abstract_saveable.params)
    # Saved by a task with a frozen teacher (`Steps.saveable`): a pure dict without it.
    params = jax.tree.map(lambda x: x, jitted.abstract_state.params)  # A copy to fill.
    saved = checkpointer.restore_params(step, nnx.to_pure_dict(params))
    nnx.replace_by_pure_dict(params, saved)
    return params


def saved_task(root: epath.Path, config: ml_collections.ConfigDict) -> FinetuningTask:
    """The task without data of a saved config, with the tokenizer and labels stored in `root`
    (a fine-tuning workdir, or a folder with the same files: a serving artifact)."""
    if "task" not in config:
        raise ConfigError(f"{root} is not a fine-tuning workdir (its config has no task).")
    tokenizer = vocab.load(str(tokenizer_file(root)))
    model_config = EncoderConfig.from_config(
        config.model, vocab_size=tokenizer.vocab_size, dtype=config.dtype
    )
    task = tasks.finetuning_task(config.task).for_model(
        config, model_config, load_labels(root, config.task) or []
    )
    task.tokenizer = tokenizer
    return task


def _task(root: epath.Path, config: ml_collections.ConfigDict, mesh: str) -> tuple:
    """(the task without data, its mesh, its logical-axis rules) of a saved config."""
    task = saved_task(root, config)
    task.pretrained_step = config.get("peft_base", {}).get("step")  # LoRA: its base.
    return task, make_mesh(mesh, config), tuple(config.mesh.logical_axis_rules)


def _restore(root: epath.Path, step: int | None, mesh: str) -> tuple:
    """A fine-tuned checkpoint's (config, step, task, mesh, rules, jitted eval step, params)."""
    directory = finetuned_checkpoints(root, step)
    checkpointer = Checkpointer(directory)
    try:
        available = checkpointer.all_steps()
        if not available or (step is not None and step not in available):
            raise ConfigError(
                f"--step={step} has no complete checkpoint in {directory}: choose one of "
                f"{available}."
                if available
                else f"{directory} holds no complete checkpoint."
            )
        step = available[-1] if step is None else step
        config = ml_collections.ConfigDict(checkpointer.read_config(step))
        task, device_mesh, rules = _task(root, config, mesh)
        tx, schedule = make_optimizer(
            config.optimizer, config.num_train_steps, task.model_config.num_hidden_layers
        )
        jitted = steps.build_steps(task, tx, schedule, device_mesh, rules, grad_accum_steps=1,
                                   seed=config.seed)  # fmt: skip
        params = _restore_params(checkpointer, step, jitted, config)
        if jitted.frozen is not None:  # LoRA: the base encoder from the checkpoint it names.
            fresh = jitted.init(task.initial_params(jitted.abstract_state.params))
            params = jitted.combine_params(params, fresh.params)
    finally:
        checkpointer.close()
    return config, step, task, device_mesh, rules, jitted.eval_step, params


def run_evaluation(session: Session, eval_file: str) -> tuple[dict[str, float], dict]:
    """The task's eval row on a labelled file, and the outputs of the pass."""
    session.task.load_eval(eval_file, session.config.eval_batch_size)
    return evaluate(session.eval_step, session.params, session.task, session.feed)


def run_prediction(session: Session, input_file: str, output: str) -> int:
    """Writes one JSON line per input example to `output`; returns how many."""
    session.task.load_inputs(input_file, session.config.eval_batch_size)
    _, outputs = evaluate(session.eval_step, session.params, session.task, session.feed,
                          metrics=False)  # fmt: skip
    rows = session.task.prediction_rows(outputs)
    if jax.process_index() == 0:
        path = epath.Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / (path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        tmp.replace(path)  # Overwrites an earlier output, as open(..., "w") would.
    return len(rows)


def json_row(row: dict[str, Any]) -> str:
    """The metrics as one JSON line (numpy scalars as plain numbers)."""
    return json.dumps({k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()})
