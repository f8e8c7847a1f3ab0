"""Post-training int8 quantization of a fine-tuned model (Qwix PTQ), and the workdir holding it.

`quantize(model)` runs Qwix's PTQ provider over every matmul of a task model: each kernel
becomes int8 values with float32 scales per output channel (absmax calibration), held in the
model, so its forward multiplies int8 weights (and, with `activations=True`, int8 activations
quantized per token on the fly: dynamic range, which XLA runs on CPU). Embedding tables, norms
and biases stay float32: they are lookups and adds, not matmuls.

A quantized workdir (`pretrain.quantize --output=Q_DIR`) is what `open_session` reads:

    Q_DIR/quantization.json   source workdir and step, the settings, the saved config
    Q_DIR/workdir.json        kind "quantized" (no run trains into it)
    Q_DIR/labels.json, tokenizer files   copied from the source
    Q_DIR/params/             orbax: the quantized parameter tree (int8 values, scales, floats)
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
import qwix
from etils import epath
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipeline import files
from pretrain.tasks.finetuning import LABELS_FILE, FinetuningTask
from pretrain.training import claim
from pretrain.training.errors import ConfigError
from pretrain.training.workdir import QUANTIZED_MARKER, TOKENIZER_FILES

MARKER = QUANTIZED_MARKER
PARAMS_DIR = "params"
KIND = "quantized"


def is_quantized(workdir: str | epath.PathLike) -> bool:
    return (epath.Path(workdir) / MARKER).exists()


def quantize(model: nnx.Module, activations: bool) -> nnx.Module:
    """A copy of a task model (`heads._Classifier`: its `__call__(ids, mask, segments)`) whose
    matmuls run on int8 weights; its state holds them (qwix runs it once on a dummy batch)."""
    if not hasattr(model, "on_batch"):
        raise ConfigError(f"{type(model).__name__} models cannot be quantized yet: quantize a "
                          "classification, regression, tagging or QA workdir.")  # fmt: skip
    rule = qwix.QuantizationRule(
        module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8 if activations else None
    )
    ids = jnp.zeros((1, 8), jnp.int32)
    return qwix.quantize_model(model, qwix.PtqProvider([rule]), ids, jnp.ones_like(ids),
                               jnp.zeros_like(ids), deterministic=True)  # fmt: skip


def check_output(output: str) -> epath.Path:
    path = epath.Path(output)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"--output={output} exists: choose a new folder (or delete it).")
    return path


def write(output: epath.Path, source: epath.Path, step: int, config: ml_collections.ConfigDict,
          params: dict[str, Any], activations: bool) -> None:  # fmt: skip
    """Q_DIR from the quantized parameter tree (pure dict) of `source`'s model at `step`."""
    output.mkdir(parents=True, exist_ok=True)
    for name in (*TOKENIZER_FILES, LABELS_FILE):
        if (source / name).exists():
            shutil.copyfile(source / name, output / name)
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save((output / PARAMS_DIR).absolute(), params)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    record = {
        "source": str(source), "step": step, "weights": "int8",
        "activations": "int8" if activations else "float32", "config": config.to_dict(),
    }  # fmt: skip
    kind = {"kind": KIND, "task": config.task, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    files.write_text(output / claim.KIND_FILE, json.dumps(kind, indent=2) + "\n")
    files.write_text(output / MARKER, json.dumps(record, indent=2) + "\n")  # Last: complete.


def read_record(workdir: epath.Path) -> tuple[ml_collections.ConfigDict, int, bool]:
    """(saved config, source step, whether activations are int8) of a quantized workdir."""
    record = json.loads((workdir / MARKER).read_text())
    return (ml_collections.ConfigDict(record["config"]), record["step"],
            record["activations"] == "int8")  # fmt: skip


def restore(workdir: epath.Path, task: FinetuningTask, mesh: Mesh, activations: bool
            ) -> tuple[nnx.GraphDef, nnx.State]:  # fmt: skip
    """The quantized model's graph and its saved state, replicated over `mesh`."""
    abstract = nnx.eval_shape(lambda: quantize(task.make_model(nnx.Rngs(0)), activations))
    graphdef, state = nnx.split(abstract)
    replicated = NamedSharding(mesh, PartitionSpec())
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        nnx.to_pure_dict(state),
    )
    checkpointer = ocp.StandardCheckpointer()
    try:
        restored = checkpointer.restore((workdir / PARAMS_DIR).absolute(), target)
    finally:
        checkpointer.close()
    nnx.replace_by_pure_dict(state, restored)
    return graphdef, state
