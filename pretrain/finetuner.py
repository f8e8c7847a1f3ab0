"""Fine-tuning: a pretrained encoder plus a new head, trained on a labelled task.

`finetune(config, workdir)` is the one library call behind `python -m pretrain.finetune`. It
reads `config.init_from` (a pretraining workdir: newest checkpoint, saved config, tokenizer),
restores only the `bert` subtree (encoder + pooler) straight into the fine-tuning mesh's
shardings, adds a classification (or regression) head, and trains with pretraining's machinery
(`pretrain/finetune_steps.py`): the same TrainState, logical-axis shardings, mixed precision,
exact gradient accumulation, dropout keyed by (seed, step), orbax checkpoints and exact resume.
Empty `init_from` trains the same architecture from random weights.

WORKDIR gets, besides pretraining's layout (`pretrain/workdir.py`): `labels.json` (class names
by id), `best/<step>/` (the checkpoint with the best `config.best_metric`), and
`predictions.tsv` (the final model on the eval set, label strings).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from data_pipeline import classification
from pretrain import classification_metrics, sharding, steps, trainer, validate
from pretrain.checkpoint import Checkpointer, CheckpointError
from pretrain.finetune_steps import FinetuneSteps, build_model, build_steps
from pretrain.metrics import MetricsWriter, ProgressLine, status
from pretrain.model import BertConfig
from pretrain.optimizer import make_optimizer, scale_by_layerwise_lr_decay
from pretrain.steps import TrainState
from pretrain.workdir import checkpoints_dir, latest_checkpoint, prepare_tokenizer, tokenizer_file

LABELS_FILE = "labels.json"
PREDICTIONS_FILE = "predictions.tsv"
BEST_DIR = "best"
# Fields of config.model that fix the parameters' shapes or meaning: with init_from they come from
# the checkpoint; a value set in the config must agree with it.
ARCHITECTURE_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "hidden_act",
    "layer_norm_eps",
)


# ------------------------------------------------------------------------------------------------
# Configuration


def resolve_model_config(
    config: ml_collections.ConfigDict, vocab_size: int, pretrained: Mapping[str, Any] | None
) -> BertConfig:
    """config.model with the architecture filled in from the checkpoint's saved config.

    A field set in the fine-tuning config that disagrees with the checkpoint is a CheckpointError;
    unset fields without a checkpoint take BertConfig's defaults (BERT-base).
    """
    fields = {k: v for k, v in config.model.items()}
    if pretrained is not None:
        saved = pretrained.get("model", {})
        for key in ARCHITECTURE_FIELDS:
            if saved.get(key) is None:
                continue
            if fields[key] is not None and fields[key] != saved[key]:
                raise CheckpointError(
                    f"config.model.{key}={fields[key]} but the checkpoint in {config.init_from} "
                    f"has {key}={saved[key]}: leave config.model.{key} unset to use the "
                    "checkpoint's, or init_from a checkpoint of that size."
                )
            fields[key] = saved[key]
    fields = {k: v for k, v in fields.items() if v is not None}
    model_config = BertConfig.from_config(fields, vocab_size=vocab_size, dtype=config.dtype)
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise ValueError(
            f"config.data.max_seq_length={config.data.max_seq_length} exceeds the model's "
            f"max_position_embeddings={model_config.max_position_embeddings}: lower it."
        )
    return model_config


# ------------------------------------------------------------------------------------------------
# Restoring the pretrained encoder


def _names(path: tuple[Any, ...]) -> str:
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return "/".join(k for k in keys if k != "value")


def restore_encoder(init_from: str, step: int, abstract_encoder: nnx.State) -> nnx.State:
    """The `params/bert` subtree of checkpoint `step`, read straight into the target shardings.

    Only the encoder's arrays are read: the pretraining heads and the optimizer moments stay on
    disk (orbax partial restore). Raises CheckpointError if a parameter is missing or its shape
    differs (another model size, or another tokenizer's vocabulary).
    """
    path = checkpoints_dir(init_from) / str(step) / "state"  # The "state" item of Checkpointer.
    saved = ocp.PyTreeCheckpointHandler().metadata(path).tree
    saved_shapes = {
        _names(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]
    }
    for p, leaf in jax.tree_util.tree_flatten_with_path({"params": {"bert": abstract_encoder}})[0]:
        name = _names(p)
        if name not in saved_shapes:
            raise CheckpointError(
                f"{path} has no parameter {name}: init_from must be a workdir of "
                "`pretrain.train` or `pretrain.import_hf` with a BERT encoder."
            )
        if saved_shapes[name] != tuple(leaf.shape):
            raise CheckpointError(
                f"{path}: {name} has shape {saved_shapes[name]} but the model expects "
                f"{tuple(leaf.shape)}; the checkpoint does not match its config or its tokenizer "
                f"({tokenizer_file(init_from)})."
            )
    checkpointer = Checkpointer(checkpoints_dir(init_from))
    try:
        return checkpointer.restore_params(step, {"bert": abstract_encoder})["bert"]
    finally:
        checkpointer.close()


# ------------------------------------------------------------------------------------------------
# Evaluation and outputs


def evaluate(
    eval_step: Callable, params: nnx.State, data: classification.EvalBatches, put: Callable,
    rows: np.ndarray, labels: list[str],
) -> tuple[dict[str, float], np.ndarray]:  # fmt: skip
    """Metrics row of a full pass over the eval set, and its outputs [N, L] in order."""
    outputs, loss_sum = [], 0.0
    for i in range(data.num_batches):
        out, loss = eval_step(params, put(data.batch(i, rows=rows)))
        outputs.append(np.asarray(jax.device_get(out)))
        loss_sum += float(loss)
    n = data.num_examples
    outputs = np.concatenate(outputs)[:n]  # Padding rows come last.
    gold = data.data.labels
    row = {"eval_loss": loss_sum / n}
    if labels:
        metrics = classification_metrics.classification_metrics(gold, outputs, len(labels))
    else:
        metrics = classification_metrics.regression_metrics(gold, outputs[:, 0])
    row.update({f"eval_{k}": v for k, v in metrics.items()})
    return row, outputs


def write_predictions(
    path: epath.Path,
    examples: classification.RawExamples,
    outputs: np.ndarray,
    labels: list[str],
) -> None:
    """`index<TAB>prediction<TAB>label` per eval example (class names, or regression scores)."""
    predicted = (
        [labels[i] for i in np.argmax(outputs, axis=-1)]
        if labels
        else [f"{x:.6g}" for x in outputs[:, 0]]
    )
    lines = ["index\tprediction\tlabel"]
    lines += [f"{i}\t{p}\t{g}" for i, (p, g) in enumerate(zip(predicted, examples.label))]
    path.write_text("\n".join(lines) + "\n")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Values that are wrong whatever the data and hardware."""
    for key in (
        "num_train_steps", "global_batch_size", "grad_accum_steps", "log_every_steps",
        "checkpoint_every_steps", "eval_batch_size", "keep_checkpoints", "data.max_seq_length",
    ):  # fmt: skip
        value = config
        for part in key.split("."):
            value = value[part]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"config.{key} must be a positive integer, got {value!r}.")
    if config.task not in classification.TASKS:
        raise ValueError(f"config.task must be one of {classification.TASKS}, got {config.task!r}.")
    if config.dtype not in ("bfloat16", "float32"):
        raise ValueError(f"config.dtype must be 'bfloat16' or 'float32', got {config.dtype!r}.")
    if not 0.0 <= config.classifier_dropout < 1.0:
        raise ValueError(
            f"config.classifier_dropout={config.classifier_dropout} must be in [0, 1)."
        )
    if not config.init_from and not config.data.tokenizer_model:
        raise ValueError(
            "config.init_from is empty (random init), so config.data.tokenizer_model must name a "
            "sentencepiece .model; or set config.init_from to a pretraining workdir."
        )


def make_finetune_optimizer(
    config: ml_collections.ConfigDict, num_layers: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """make_optimizer with warmup_fraction resolved and optional layer-wise lr decay chained."""
    opt = ml_collections.ConfigDict(config.optimizer.to_dict())
    if opt.warmup_steps < 0:
        opt.warmup_steps = round(opt.warmup_fraction * config.num_train_steps)
    tx, schedule = make_optimizer(opt, config.num_train_steps)
    if opt.layerwise_lr_decay != 1.0:
        tx = optax.chain(tx, scale_by_layerwise_lr_decay(opt.layerwise_lr_decay, num_layers))
    return tx, schedule


def _best_metric(config: ml_collections.ConfigDict, labels: list[str]) -> str:
    if not labels:
        allowed = ("eval_pearson", "eval_spearman")
    else:
        allowed = ("eval_accuracy", "eval_macro_f1") + (
            ("eval_f1", "eval_mcc") if len(labels) == 2 else ()
        )
    name = config.best_metric or allowed[0]
    if name not in allowed:
        raise ValueError(
            f"config.best_metric={name!r} is not reported for this task: use one of {allowed}."
        )
    return name


# ------------------------------------------------------------------------------------------------
# The loop


def _tokenizer_and_checkpoint(
    config: ml_collections.ConfigDict, workdir: epath.Path
) -> tuple[Any, int | None, dict | None]:
    """The run's tokenizer (copied into WORKDIR) and init_from's newest (step, saved config)."""
    source = config.data.tokenizer_model
    step, saved_config = None, None
    if config.init_from:
        step, saved_config = latest_checkpoint(config.init_from)
        source = str(tokenizer_file(config.init_from))
        if (
            config.data.tokenizer_model
            and epath.Path(config.data.tokenizer_model).read_bytes()
            != epath.Path(source).read_bytes()
        ):
            raise ValueError(
                f"config.data.tokenizer_model differs from {source}, the tokenizer the "
                "checkpoint was trained with: leave data.tokenizer_model empty with init_from."
            )
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_tokenizer(ml_collections.ConfigDict({"tokenizer_model": source}), workdir)
    return tokenizer, step, saved_config


def _datasets(
    config: ml_collections.ConfigDict, workdir: epath.Path, tokenizer: Any
) -> classification.ClassificationData:
    """Train and eval data; the label set is saved on first start and reused on restarts."""
    path = workdir / LABELS_FILE
    saved_labels = None
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["task"] != config.task:
            raise ValueError(
                f"{workdir} was fine-tuned with task={saved['task']!r}, not {config.task!r}: "
                "use a new --workdir."
            )
        saved_labels = saved["labels"]
    data = classification.build_datasets(
        config.data,
        tokenizer,
        task=config.task,
        seed=config.seed,
        global_batch_size=config.global_batch_size,
        eval_batch_size=config.eval_batch_size,
        labels=saved_labels,
    )
    if saved_labels is None and jax.process_index() == 0:
        path.write_text(json.dumps({"task": config.task, "labels": data.labels}, indent=2) + "\n")
    return data


def finetune(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Fine-tunes as `config` says, resuming from WORKDIR/checkpoints; returns the last eval row."""
    workdir_path = epath.Path(workdir)
    is_main = jax.process_index() == 0
    check_config(config)
    mesh = sharding.create_mesh(config.mesh)
    rules = tuple(config.mesh.logical_axis_rules)
    validate.check_batch_layout(config, sharding.data_parallel_size(mesh, rules))
    tokenizer, pretrained_step, pretrained = _tokenizer_and_checkpoint(config, workdir_path)
    data = _datasets(config, workdir_path, tokenizer)
    labels = data.labels  # [] for regression.
    model_config = resolve_model_config(config, tokenizer.vocab_size, pretrained)
    tx, schedule = make_finetune_optimizer(config, model_config.num_hidden_layers)
    jitted = build_steps(
        functools.partial(build_model, model_config, len(labels), config.classifier_dropout),
        tx,
        schedule,
        mesh,
        rules,
        regression=not labels,
        grad_accum_steps=config.grad_accum_steps,
        seed=config.seed,
    )
    # Saved with every checkpoint: the config with the architecture actually used filled in.
    config_json = config.to_dict()
    config_json["model"].update({k: getattr(model_config, k) for k in ARCHITECTURE_FIELDS})
    if is_main:
        (workdir_path / "config.json").write_text(json.dumps(config_json, indent=2))

    checkpointer = Checkpointer(
        checkpoints_dir(workdir_path), keep=config.keep_checkpoints, cleanup_tmp=True
    )
    best = None
    if data.eval is not None:
        best = Checkpointer(workdir_path / BEST_DIR, keep=1, cleanup_tmp=True)
    try:
        return _train(
            config, workdir_path, data, jitted, checkpointer, best, config_json, pretrained_step
        )
    finally:
        # Commit the saves in flight on every exit, errors and Ctrl-C included.
        for manager in (checkpointer, best):
            if manager is not None:
                manager.close()


def _train(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    data: classification.ClassificationData,
    jitted: FinetuneSteps,
    checkpointer: Checkpointer,
    best: Checkpointer | None,
    config_json: dict[str, Any],
    pretrained_step: int | None,
) -> dict[str, float]:
    """The state (resumed, from the pretrained encoder, or fresh), then the train/eval loop."""
    is_main = jax.process_index() == 0
    labels = data.labels
    best_metric = _best_metric(config, labels)
    restored = checkpointer.restore_latest(jitted.abstract_state)
    if restored is not None:
        state, start_step = restored
        status(f"Resumed from {checkpointer.directory} at step {start_step}.")
    elif pretrained_step is not None:
        abstract_encoder = jitted.abstract_state.params["bert"]
        encoder = restore_encoder(config.init_from, pretrained_step, abstract_encoder)
        state, start_step = jitted.init_with_encoder(encoder), 0
        status(f"Encoder restored from {config.init_from}, step {pretrained_step}.")
    else:
        state, start_step = jitted.init(), 0
        status("Random init: config.init_from is empty.")
    best_value = -np.inf
    if best is not None and (best_step := best.latest_step()) is not None:
        best_value = best.read_config(best_step)["best"]["value"]

    mesh, rules = jitted.mesh, tuple(config.mesh.logical_axis_rules)

    def rows_and_put(batch_size: int) -> tuple[np.ndarray, Callable]:
        rows = sharding.process_rows(mesh, rules, batch_size)
        put = functools.partial(
            sharding.host_to_global, mesh=mesh, rules=rules, rows=rows, global_batch_size=batch_size
        )
        return rows, put

    train_rows, put_train = rows_and_put(config.global_batch_size)
    eval_rows, put_eval = rows_and_put(config.eval_batch_size)
    writer = MetricsWriter(workdir, enabled=is_main)
    progress = ProgressLine(config.num_train_steps, enabled=is_main)
    preemption = trainer.PreemptionWatcher()
    preemption.start(start_step)

    def check_finite(state: TrainState) -> None:
        bad = int(jax.device_get(state.bad_steps))
        if bad > config.max_bad_steps:
            first = int(jax.device_get(state.first_bad_step)) + 1
            raise trainer.NonFiniteError(
                f"non-finite loss or gradient at step {first} ({bad} bad steps, "
                f"config.max_bad_steps={config.max_bad_steps}); lower "
                "config.optimizer.learning_rate or raise config.max_bad_steps."
            )

    batches = trainer._device_batches(
        data.train,
        start_step,
        config.num_train_steps,
        put_train,
        train_rows,
        config.prefetch_batches,
    )
    train_step = jitted.train_step
    if start_step < config.num_train_steps:
        train_step, batches, seconds = steps.compile_ahead(train_step, state, batches)
        status(f"Compiled the train step in {seconds:.1f}s.")
    eval_row, outputs = {}, None
    progress.start(start_step)
    last_time, last_step = time.time(), start_step
    try:
        for step in range(start_step + 1, config.num_train_steps + 1):
            state, metrics = train_step(state, next(batches))
            if step % config.log_every_steps == 0 or step in (1, config.num_train_steps):
                check_finite(state)
                row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.time()
                if step > last_step:
                    examples = config.global_batch_size * (step - last_step)
                    row["examples_per_sec"] = examples / (now - last_time)
                    last_time, last_step = now, step
                writer.write(step, row)
                progress.show(step, row)
            if data.eval is not None and (
                (config.eval_every_steps > 0 and step % config.eval_every_steps == 0)
                or step == config.num_train_steps
            ):
                eval_row, outputs = evaluate(
                    jitted.eval_step, state.params, data.eval, put_eval, eval_rows, labels
                )
                writer.write(step, eval_row)
                status(
                    f"eval at step {step}: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in eval_row.items())
                )
                if eval_row[best_metric] > best_value:
                    check_finite(state)
                    best_value = eval_row[best_metric]
                    record = {**config_json, "best": {"metric": best_metric, "value": best_value}}
                    best.save(step, state, record, force=True)
            stop = preemption.should_stop(step)
            if stop:
                logging.warning("Preempted (SIGTERM): saving step %d and exiting.", step)
            if stop or step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
                check_finite(state)  # Never save past a step that should have stopped the run.
                checkpointer.save(step, state, config_json, force=stop)
            if stop:
                return eval_row
    finally:
        writer.close()
    if outputs is not None and is_main:
        write_predictions(workdir / PREDICTIONS_FILE, data.eval_examples, outputs, labels)
    return eval_row
