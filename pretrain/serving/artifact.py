"""The serving artifact: a fine-tuned model's inference function serialized with `jax.export`.

    SERVE_DIR/manifest.json        format_version, task, buckets, batch_size (row_buckets: the
                                   batch sizes compiled at load), inputs / outputs
                                   (names, dtypes, shapes), step, source workdir, versions
    SERVE_DIR/model_<S>.stablehlo  the task's eval step at [batch, S], batch symbolic (StableHLO,
                                   one per bucket S): (parameter leaves, features) -> outputs
    SERVE_DIR/params.npz           the parameter leaves, in the functions' argument order
    SERVE_DIR/config.json          the run's config (the task's data keys: max lengths, labels)
    SERVE_DIR/labels.json, tokenizer.model | vocab.txt   as in the workdir

Loading needs JAX, the tokenizer and the task's input and output code (`pretrain/tasks`), not
the model code: no network is built or traced. `FORMAT_VERSION` changes whenever the layout
does; an artifact of another version is refused with one line saying to re-export it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipeline import files
from data_pipeline.errors import ConfigError, MissingInputError
from pretrain.inference import quantized
from pretrain.inference import session as session_lib
from pretrain.serving import inputs
from pretrain.serving.predictor import Predictor, argument_avals, output_avals, row_buckets
from pretrain.tasks.finetuning import load_labels, save_labels
from pretrain.training.workdir import checkpoints_dir, tokenizer_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS = "params.npz"
CONFIG = "config.json"
SMALLEST_BUCKET = 16


def default_buckets(max_seq_length: int) -> list[int]:
    """16, 32, 64, ... below `max_seq_length`, and `max_seq_length` itself."""
    buckets, b = [], SMALLEST_BUCKET
    while b < max_seq_length:
        buckets.append(b)
        b *= 2
    return buckets + [max_seq_length]


def parse_buckets(flag: str, max_seq_length: int) -> list[int]:
    """`--buckets=16,64,128` (empty: `default_buckets`); each in [3, max_seq_length]."""
    if not flag.strip():
        return default_buckets(max_seq_length)
    try:
        buckets = sorted({int(x) for x in flag.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--buckets={flag!r}: give sequence lengths, e.g. 32,64,128.") from None
    if not buckets or buckets[0] < 3 or buckets[-1] > max_seq_length:
        raise ConfigError(
            f"--buckets={flag!r}: every length must be in [3, {max_seq_length}], the model's "
            "data.max_seq_length."
        )
    return buckets


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size} must be at least 1.")


def _check_serialization() -> None:
    """jax.export serializes with flatbuffers, which JAX does not install itself."""
    if importlib.util.find_spec("flatbuffers") is None:
        raise ConfigError(
            "serving artifacts need the flatbuffers package (jax.export's serialization): "
            "pip install -e '.[serve]' (or pip install flatbuffers)."
        )


def _project_version() -> str:
    try:
        return importlib.metadata.version("bert-jax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sample_batch(session: session_lib.Session, batch_size: int) -> dict[str, np.ndarray]:
    """One batch of the task's features, for their names, dtypes and trailing shapes."""
    accepts = inputs.ACCEPTS[session.config.task]
    item = "a" if "texts" in accepts else ("a", "a")
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "input")
        inputs.write_inputs(session.config.task, [item], path)
        session.task.load_inputs(path, batch_size)
    return session.task.eval_data.batch(0)


Functions = dict[int, jax.export.Exported]  # bucket -> its exported inference function


def export_session(
    session: session_lib.Session, buckets: list[int], batch_size: int
) -> tuple[Functions, list[Any], dict[str, Any]]:
    """(an Exported per bucket, the parameter leaves they take, the manifest)."""
    leaves, treedef = jax.tree.flatten(session.params)
    eval_step = session.eval_step

    def infer(params: list[Any], features: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return eval_step(jax.tree.unflatten(treedef, params), features)[1]

    batch = _sample_batch(session, batch_size)
    leaf_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    (rows,) = jax.export.symbolic_shape("batch")  # Compiled for each row bucket at warm-up.
    functions = {}
    for bucket in buckets:
        specs = {k: jax.ShapeDtypeStruct((rows, bucket, *v.shape[2:]) if v.ndim > 1
                                         else (rows,), v.dtype)
                 for k, v in batch.items()}  # fmt: skip
        functions[bucket] = jax.export.export(jax.jit(infer))(leaf_specs, specs)
    first = functions[buckets[0]]  # Described with the length axis named, as all buckets.
    features, outputs = argument_avals(first)[1], output_avals(first)

    info = {
        "format_version": FORMAT_VERSION,
        "task": session.config.task,
        "buckets": buckets,
        "batch_size": batch_size,
        "row_buckets": row_buckets(batch_size),
        "inputs": _described(features, buckets[0]),
        "outputs": _described(outputs, buckets[0]),
        "step": session.step,
        "project_version": _project_version(),
        "jax_version": jax.__version__,
    }
    return functions, leaves, info


def _described(avals: dict[str, Any], bucket: int) -> dict[str, Any]:
    """Name -> dtype and shape, with the batch and sequence axes named."""
    out = {}
    for name, a in avals.items():
        dims: list[Any] = ["batch", *a.shape[1:]]
        if a.ndim > 1 and a.shape[1] == bucket:
            dims[1] = "length"
        out[name] = {"dtype": str(a.dtype), "shape": dims}
    return out


def write(workdir: str, output: str, buckets_flag: str = "", batch_size: int = 8,
          step: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Exports `workdir`'s model (best checkpoint, else newest, or `step`) to `output`;
    returns the manifest."""
    _check_batch_size(batch_size)
    _check_serialization()
    out = epath.Path(output)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise ConfigError(f"--output={output} is a non-empty folder: give a new one.")
    session = session_lib.open_session(workdir, step, "1,1,1")
    buckets = parse_buckets(buckets_flag, session.config.data.max_seq_length)
    functions, leaves, info = export_session(session, buckets, batch_size)
    info["source_workdir"] = os.path.abspath(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # Re-export: never a whole-looking mix.
    for bucket, exported in functions.items():
        files.write_bytes(out / f"model_{bucket}.stablehlo", bytes(exported.serialize()))
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(jax.device_get(x)) for x in leaves])
    files.write_bytes(out / PARAMS, buffer.getvalue())
    files.write_text(out / CONFIG, json.dumps(session.config.to_dict(), indent=1) + "\n")
    source_tokenizer = tokenizer_file(workdir)
    shutil.copyfile(source_tokenizer, out / source_tokenizer.name)
    labels = load_labels(epath.Path(workdir), session.config.task)
    if labels is not None:
        save_labels(out, session.config.task, labels)
    files.write_text(out / MANIFEST, json.dumps(info, indent=1) + "\n")  # Last: marks it whole.
    return info


def load(directory: str) -> Predictor:
    """The Predictor of an artifact `write` made; one-line errors for anything else."""
    root = epath.Path(directory)
    if not (root / MANIFEST).exists():
        raise MissingInputError(
            f"{directory} is not a serving artifact (no {MANIFEST}): write one with "
            f"python -m pretrain.export_serving --workdir=FT_DIR --output={directory}."
        )
    info = json.loads((root / MANIFEST).read_text())
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{directory} is a serving artifact of format version {version}, but this version "
            f"of the project reads version {FORMAT_VERSION}: re-export it with python -m "
            "pretrain.export_serving --workdir=FT_DIR --output=NEW_DIR."
        )
    _check_serialization()
    config = ml_collections.ConfigDict(json.loads((root / CONFIG).read_text()))
    task = session_lib.saved_task(root, config)
    functions = {
        b: jax.export.deserialize(bytearray((root / f"model_{b}.stablehlo").read_bytes()))
        for b in info["buckets"]
    }
    avals = argument_avals(functions[info["buckets"][0]])[0]
    with np.load(root / PARAMS) as saved:  # bfloat16 comes back as raw bytes: view it again.
        params = [saved[f"arr_{i}"].view(a.dtype) for i, a in enumerate(avals)]
    return Predictor(task, functions, params, info)


def from_workdir(workdir: str, buckets_flag: str = "", batch_size: int = 8,
                 step: int | None = None) -> Predictor:  # fmt: skip
    """The Predictor of a fine-tuning workdir, exported in memory (no files written)."""
    _check_batch_size(batch_size)
    session = session_lib.open_session(workdir, step, "1,1,1")
    buckets = parse_buckets(buckets_flag, session.config.data.max_seq_length)
    functions, leaves, info = export_session(session, buckets, batch_size)
    return Predictor(session.task, functions, leaves, info)


def open_model(path: str, buckets_flag: str = "", batch_size: int = 8) -> Predictor:
    """An artifact folder (has manifest.json) or a fine-tuning workdir (has checkpoints)."""
    root = epath.Path(path)
    if not root.is_dir():
        raise MissingInputError(
            f"--model={path} is not a folder: give a serving artifact (python -m "
            "pretrain.export_serving) or a fine-tuning workdir."
        )
    if (root / MANIFEST).exists():
        return load(path)
    if not (checkpoints_dir(root).is_dir() or quantized.is_quantized(root)):
        raise MissingInputError(
            f"--model={path} is neither a serving artifact (no {MANIFEST}) nor a fine-tuning "
            "workdir (no checkpoints/) nor a `pretrain.quantize` one: give one of them."
        )
    return from_workdir(path, buckets_flag, batch_size)
