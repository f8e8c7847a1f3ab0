"""Workdirs to Hugging Face folders that transformers loads with no remote code.

A checkpoint's parameters, read on one device whatever mesh saved them (the optimizer state is
never read), become

    HF_DIR/config.json        the transformers config of the model's class
    HF_DIR/model.safetensors  float32, HF names; a tied decoder is stored once, as HF does
    HF_DIR/tokenizer files    pretrain/hf/tokenizer_files.py

The class follows the workdir: a pretraining workdir gives `BertForPreTraining` (NSP recipe),
`BertForMaskedLM` or `ModernBertForMaskedLM` (packed MLM); a fine-tuning workdir gives its
task's class (`*ForSequenceClassification`, `*ForTokenClassification`, `*ForQuestionAnswering`)
with `id2label`, its adapters (LoRA) merged into plain weights; a retrieval workdir gives the
plain encoder (`BertModel` / `ModernBertModel`) as a sentence-transformers folder
(pretrain/hf/sentence_transformers.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding

from data_pipeline import files, vocab
from data_pipeline.errors import ConfigError, MissingInputError
from pretrain.hf import convert as hf_convert
from pretrain.hf import sentence_transformers
from pretrain.hf import tokenizer_files as hf_tokenizer
from pretrain.inference.session import open_session
from pretrain.models.config import EncoderConfig
from pretrain.models.heads import PreTrainingModel
from pretrain.training import claim
from pretrain.training import workdir as workdir_lib
from pretrain.training.checkpoint import Checkpointer

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class Restored:
    """A workdir's checkpoint as plain arrays, with what is needed to name them for HF."""

    params: dict[str, Any]  # Pure dict of numpy arrays (adapters merged).
    model_config: EncoderConfig
    step: int
    tokenizer: vocab.Tokenizer
    head: str  # See pretrain/hf/convert.py.
    labels: list[str] | None = None  # Fine-tuned classifiers and taggers: class names by id.
    pooling: str | None = None  # Retrieval: the sentence embedding's pooling (and its length).
    max_seq_length: int = 0


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export_workdir` wrote."""

    step: int
    num_params: int
    files: list[str]
    hf_class: str


def _pick_step(checkpointer: Checkpointer, step: int | None) -> int:
    available = checkpointer.all_steps()
    if not available:
        raise MissingInputError(
            f"{checkpointer.directory} holds no complete checkpoint: train first."
        )
    if step is None:
        return available[-1]
    if step not in available:
        raise ConfigError(
            f"--step={step} has no complete checkpoint in {checkpointer.directory}: choose one of "
            f"{available}."
        )
    return step


def read_params(
    directory: Any, step: int | None, make_model: Callable[[nnx.Rngs], nnx.Module]
) -> tuple[dict[str, Any], int]:
    """(pure dict of numpy arrays, step) of the `params` of a checkpoint, read on one device
    into the tree `make_model` builds."""
    abstract = nnx.eval_shape(lambda: make_model(nnx.Rngs(params=0)))
    one_device = SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device),
        nnx.state(abstract, nnx.Param),
    )
    checkpointer = Checkpointer(directory)
    try:
        step = _pick_step(checkpointer, step)
        params = checkpointer.restore_params(step, target)
    finally:
        checkpointer.close()
    return jax.tree.map(np.asarray, nnx.to_pure_dict(params)), step


def saved_config(directory: Any, step: int | None) -> tuple[dict[str, Any], int]:
    """(the config saved with checkpoint `step` (newest: None), its step)."""
    checkpointer = Checkpointer(directory)
    try:
        step = _pick_step(checkpointer, step)
        return checkpointer.read_config(step), step
    finally:
        checkpointer.close()


def restore_pretraining(workdir: str, step: int | None = None) -> Restored:
    """A pretraining workdir's checkpoint (the newest when `step` is None)."""
    tokenizer_path = workdir_lib.tokenizer_file(workdir)
    directory = workdir_lib.checkpoints_dir(workdir)
    if not tokenizer_path.exists() or not directory.is_dir():
        raise MissingInputError(
            f"{workdir} has no tokenizer or no checkpoints/: point --workdir at a workdir of "
            "`pretrain.train`, `pretrain.finetune` or `pretrain.import_hf`."
        )
    saved, step = saved_config(directory, step)
    tokenizer = vocab.load(str(tokenizer_path))
    config = EncoderConfig.from_config(
        ml_collections.ConfigDict(saved["model"]), vocab_size=tokenizer.vocab_size, dtype="float32"
    )
    nsp = saved.get("data", {}).get("objective", "nsp") == "nsp"
    params, step = read_params(
        directory, step, lambda rngs: PreTrainingModel(config, with_nsp=nsp, rngs=rngs)
    )
    head = "pretraining" if nsp else "masked_lm"
    return Restored(params, config, step, tokenizer, head)


def restore_finetuning(workdir: str, step: int | None = None) -> Restored:
    """A fine-tuning workdir's model (LoRA adapters merged): the best checkpoint when `step` is
    None, else `step`."""
    session = open_session(workdir, step, mesh="1,1,1")
    task = session.task
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(jax.device_get(session.params)))
    model_config = dataclasses.replace(task.model_config, dtype=jnp.float32)
    return Restored(
        task.export_params(params), model_config, session.step, task.tokenizer,
        task.export_head, task.export_labels(), getattr(task, "pooling", None),
        session.config.data.max_seq_length,
    )  # fmt: skip


def restore(workdir: str, step: int | None = None) -> Restored:
    """Any workdir's checkpoint: pretraining, or fine-tuning (its task's model)."""
    kind = claim.read_kind(workdir) or {"kind": "pretraining"}
    if kind["kind"] == "quantized":  # Hugging Face's classes hold float weights.
        raise ConfigError(
            f"{workdir} is an int8 model of `pretrain.quantize`: export the float32 workdir it "
            "was quantized from (named in its quantization.json)."
        )
    if kind["kind"] == "finetuning":
        return restore_finetuning(workdir, step)
    return restore_pretraining(workdir, step)


def write_folder(restored: Restored, output: str) -> list[str]:
    """Writes the HF folder of `restored`; returns the files written."""
    config = restored.model_config
    state_dict = hf_convert.to_hf_state_dict(restored.params, config, restored.head)
    hf_convert.drop_tied(state_dict, config)
    # Deferred: the `hf` extra is needed by the interchange tools only.
    from safetensors.numpy import save_file

    os.makedirs(output, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state_dict.items()},
        os.path.join(output, HF_WEIGHTS),
        metadata={"format": "pt"},  # transformers refuses files without it.
    )
    hf_config = hf_convert.config_to_hf(config, restored.head, restored.tokenizer, restored.labels)
    files.write_text(os.path.join(output, HF_CONFIG), json.dumps(hf_config, indent=2))
    written = hf_tokenizer.export_tokenizer(
        restored.tokenizer, output, config.max_position_embeddings
    )
    return [HF_CONFIG, HF_WEIGHTS, *written]


def export_workdir(workdir: str, output: str, step: int | None = None) -> Exported:
    """Writes the checkpoint at `step` (newest: None) of `workdir` as an HF folder `output`."""
    restored = restore(workdir, step)
    written = write_folder(restored, output)
    hf_class = hf_convert.ARCHS[restored.model_config.arch].CLASSES[restored.head]
    if restored.pooling:
        written += sentence_transformers.write_modules(
            output, pooling=restored.pooling, hidden_size=restored.model_config.hidden_size,
            max_seq_length=restored.max_seq_length,
        )  # fmt: skip
        hf_class += " in a sentence-transformers folder"
    num_params = sum(int(np.size(x)) for x in jax.tree.leaves(restored.params))
    return Exported(step=restored.step, num_params=num_params, files=written, hf_class=hf_class)
