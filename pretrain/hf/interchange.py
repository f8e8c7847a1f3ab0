"""Pretraining workdirs to and from Hugging Face `BertForPreTraining` folders.

Export (`export_workdir`): a checkpoint's parameters, read on one device whatever mesh saved
them (the optimizer state is never read), become

    HF_DIR/config.json        a `transformers.BertConfig`
    HF_DIR/model.safetensors  float32, HF names; the tied MLM decoder is stored once, as HF does
    HF_DIR/tokenizer files    pretrain/hf/tokenizer_files.py

Import (`import_hf_dir`): a local HF BERT folder (config.json; model.safetensors or
pytorch_model.bin, sharded or not; its tokenizer) becomes a workdir:

    WORKDIR/checkpoints/0/     the TrainState `steps.init_train_state` builds, with HF's
                               parameters, fresh optimizer state, step 0, and the full pretraining
                               config saved beside it exactly as the trainer saves its own
    WORKDIR/vocab.txt | tokenizer.model   the tokenizer (pretrain/training/workdir.py layout)
    WORKDIR/config.json        that config, as the trainer writes it
    WORKDIR/pretrain_config.py the same config as a config file, for continued pretraining:
        python -m pretrain.train --config=WORKDIR/pretrain_config.py --workdir=WORKDIR \
            --config.data.train_files=GLOB

Parts a checkpoint lacks (a `BertForMaskedLM` has no pooler and no NSP head, a `BertModel` no
heads) start from our initializer, as in a fresh run, and are listed in the import summary.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import SingleDeviceSharding

from configs import default as default_config
from data_pipeline import files, vocab
from data_pipeline.errors import ConfigError, DataError, MissingInputError
from pretrain.hf import convert as hf_convert
from pretrain.hf import tokenizer_files as hf_tokenizer
from pretrain.models.config import EncoderConfig
from pretrain.models.heads import PreTrainingModel
from pretrain.models.params import count_params
from pretrain.training import claim, steps
from pretrain.training import workdir as workdir_lib
from pretrain.training.checkpoint import Checkpointer
from pretrain.training.errors import WorkdirError
from pretrain.training.optimizer import make_optimizer

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
# Looked for in this order: safetensors first, so torch is needed only for .bin checkpoints.
_WEIGHT_FILES = (
    HF_WEIGHTS,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Stored by HF as references to other tensors (`_tied_weights_keys`), not in its files.
_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
# Parts a checkpoint may lack (BertForMaskedLM has no pooler or NSP head, BertModel no heads):
# the tensor that shows the part is there, its HF name prefix, and our subtree.
_OPTIONAL_PARTS = {
    "pooler": ("bert.pooler.dense.weight", "bert.pooler.", ("encoder", "pooler")),
    "masked-LM head": ("cls.predictions.transform.dense.weight", "cls.predictions.", ("mlm_head",)),
    "next-sentence head": ("cls.seq_relationship.weight", "cls.seq_relationship.", ("nsp_head",)),
}
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.")  # Bare `BertModel` names.
CONFIG_FILE = "pretrain_config.py"


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export_workdir` wrote."""

    step: int
    num_params: int
    files: list[str]


@dataclasses.dataclass(frozen=True)
class Imported:
    """What `import_hf_dir` wrote."""

    num_params: int
    vocab_size: int
    tokenizer_file: str
    fresh_parts: list[str]  # Parts the HF checkpoint lacked (pooler, heads), initialized anew.
    config_file: str


def restore_params(
    workdir: str, step: int | None = None
) -> tuple[dict[str, Any], EncoderConfig, int, hf_tokenizer.Tokenizer]:
    """(parameter pure dict of numpy arrays, model config, step, tokenizer) of a workdir.

    `step` None: the newest complete checkpoint. The model's shape comes from the config saved
    with the checkpoint and the vocabulary size from the workdir's tokenizer, as in training.
    """
    kind = claim.read_kind(workdir)
    if kind is not None and kind["kind"] != "pretraining":
        raise WorkdirError(
            f"{workdir} is a {kind['kind']} workdir; this export reads pretraining workdirs "
            "(of `pretrain.train` or `pretrain.import_hf`)."
        )
    tokenizer_path = workdir_lib.tokenizer_file(workdir)
    directory = workdir_lib.checkpoints_dir(workdir)
    if not tokenizer_path.exists() or not directory.is_dir():
        raise MissingInputError(
            f"{workdir} has no tokenizer or no checkpoints/: point --workdir at a workdir of "
            "`pretrain.train` or `pretrain.import_hf`."
        )
    checkpointer = Checkpointer(directory)
    try:
        available = checkpointer.all_steps()
        if not available:
            raise MissingInputError(f"{directory} holds no complete checkpoint: pretrain first.")
        if step is None:
            step = available[-1]
        elif step not in available:
            raise ConfigError(
                f"--step={step} has no complete checkpoint in {directory}: choose one of "
                f"{available}."
            )
        saved = checkpointer.read_config(step)
        tokenizer = vocab.load(str(tokenizer_path))
        config = EncoderConfig.from_config(
            ml_collections.ConfigDict(saved["model"]),
            vocab_size=tokenizer.vocab_size,
            dtype="float32",
        )
        abstract = nnx.eval_shape(lambda: PreTrainingModel(config, rngs=nnx.Rngs(params=0)))
        one_device = SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device),
            nnx.state(abstract, nnx.Param),
        )
        params = checkpointer.restore_params(step, target)
    finally:
        checkpointer.close()
    return jax.tree.map(np.asarray, nnx.to_pure_dict(params)), config, step, tokenizer


def export_workdir(workdir: str, output: str, step: int | None = None) -> Exported:
    """Writes the checkpoint at `step` (newest: None) of `workdir` as an HF folder `output`."""
    params, config, step, tokenizer = restore_params(workdir, step)
    state_dict = hf_convert.to_hf_state_dict(params, config)
    for name in _TIED:
        del state_dict[name]
    # Deferred: the `hf` extra is needed by the interchange tools only.
    from safetensors.numpy import save_file

    os.makedirs(output, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state_dict.items()},
        os.path.join(output, HF_WEIGHTS),
        metadata={"format": "pt"},  # transformers refuses files without it.
    )
    files.write_text(
        os.path.join(output, HF_CONFIG), json.dumps(hf_convert.bert_config_to_hf(config), indent=2)
    )
    written = hf_tokenizer.export_tokenizer(tokenizer, output, config.max_position_embeddings)
    num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    return Exported(step=step, num_params=num_params, files=[HF_CONFIG, HF_WEIGHTS, *written])


def load_hf_state_dict(hf_dir: str) -> dict[str, np.ndarray]:
    """The tensors of an HF folder as numpy (floating ones as float32), whatever the format."""
    found = [n for n in _WEIGHT_FILES if os.path.isfile(os.path.join(hf_dir, n))]
    if not found:
        raise MissingInputError(f"{hf_dir} holds no weights: expected one of {_WEIGHT_FILES}.")
    path = os.path.join(hf_dir, found[0])
    if path.endswith(".index.json"):
        with open(path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        paths = [os.path.join(hf_dir, shard) for shard in shards]
    else:
        paths = [path]
    tensors: dict[str, np.ndarray] = {}
    for shard in paths:
        tensors.update(
            _load_safetensors(shard) if shard.endswith(".safetensors") else _load_bin(shard)
        )
    return {
        k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in tensors.items()
    }


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (TypeError, ValueError) as e:  # e.g. bfloat16, which numpy lacks.
        raise DataError(f"{path} cannot be read as numpy ({e}): save it as float32") from None


def _load_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise DataError(
            f"{path} is a PyTorch checkpoint and torch is not installed: install the `hf` "
            "extra, or convert the checkpoint to model.safetensors."
        ) from None
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return {
        k: (v.float() if v.is_floating_point() else v).numpy()
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor)
    }


def pretraining_config(hf_config: Mapping[str, Any], tokenizer: Any) -> ml_collections.ConfigDict:
    """configs/default.py with `model.*` from an HF config and `data.*` from its tokenizer."""
    config = default_config.get_config()
    for key, value in hf_convert.bert_config_from_hf(hf_config).items():
        if key in config.model:
            config.model[key] = value
    config.data.vocab_size = tokenizer.vocab_size
    config.data.lower_case = tokenizer.lower_case
    config.data.max_seq_length = min(
        config.data.max_seq_length, config.model.max_position_embeddings
    )
    config.data.max_predictions_per_seq = min(
        config.data.max_predictions_per_seq, config.data.max_seq_length - 3
    )
    return config


def _partial_params(
    state_dict: dict[str, np.ndarray], abstract_params: nnx.State, config: EncoderConfig
) -> tuple[dict[str, Any], list[str]]:
    """Our pure dict of the HF tensors, without the subtrees of the parts the checkpoint lacks
    (returned by name)."""
    if not any(k.startswith("bert.") for k in state_dict):  # A bare BertModel's names.
        state_dict = {
            f"bert.{k}" if k.startswith(_ENCODER_PREFIXES) else k: v for k, v in state_dict.items()
        }
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nnx.to_pure_dict(abstract_params))
    placeholders = hf_convert.to_hf_state_dict(zeros, config)
    missing = [part for part, (marker, _, _) in _OPTIONAL_PARTS.items() if marker not in state_dict]
    for part in missing:  # Stand-ins so that the conversion runs; dropped right after.
        prefix = _OPTIONAL_PARTS[part][1]
        state_dict = state_dict | {
            k: v for k, v in placeholders.items() if k.startswith(prefix) and k not in _TIED
        }
    params = hf_convert.from_hf_state_dict(state_dict, config, heads="pretraining")
    for part in missing:
        *parents, leaf = _OPTIONAL_PARTS[part][2]
        node = params
        for key in parents:
            node = node[key]
        del node[leaf]
    return params, missing


def _state_with_params(
    key: jax.Array,
    params: dict[str, Any],
    *,
    model_config: EncoderConfig,
    tx: optax.GradientTransformation,
) -> steps.TrainState:
    """`init_train_state`'s state with `params` (a pure dict, maybe partial) in place of the
    initializer's values and the optimizer state built for them. Jitted, XLA drops the random
    init of every replaced parameter."""
    make_model = lambda rngs: PreTrainingModel(model_config, rngs=rngs)
    state = steps.init_train_state(key, None, make_model=make_model, tx=tx)
    nnx.replace_by_pure_dict(state.params, params)
    return state.replace(opt_state=tx.init(state.params))


def _config_file_text(config: ml_collections.ConfigDict, hf_dir: str, workdir: str) -> str:
    """A config file (like configs/*.py) that reproduces `config`: the defaults plus changes."""
    default = default_config.get_config()
    changes = [
        f"    c.{group}.{key} = {config[group][key]!r}"
        for group in ("model", "data")
        for key in config[group]
        if config[group][key] != default[group][key]
    ]
    path = os.path.join(workdir, CONFIG_FILE)
    return "\n".join(
        [
            f'"""Continued pretraining of the BERT imported from {hf_dir}.',
            "",
            "Written by `python -m pretrain.import_hf`; model.* and data.* match the imported",
            "checkpoint and tokenizer. Run (with any other --config.KEY=VALUE):",
            "",
            f"    python -m pretrain.train --config={path} --workdir={workdir} \\",
            "        --config.data.train_files=GLOB",
            '"""',
            "",
            "from configs import default",
            "",
            "",
            "def get_config():",
            "    c = default.get_config()",
            *changes,
            "    return c",
            "",
        ]
    )


def import_hf_dir(hf_dir: str, workdir: str) -> Imported:
    """Turns the HF BERT folder `hf_dir` into the pretraining workdir `workdir` (new or empty)."""
    config_path = os.path.join(hf_dir, HF_CONFIG)
    if not os.path.isfile(config_path):
        raise MissingInputError(
            f"{config_path} not found: --hf_dir must be a local HF model folder."
        )
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise ConfigError(f"{workdir} is not empty: import into a new --workdir.")
    with open(config_path, encoding="utf-8") as f:
        hf_config = json.load(f)
    model_kwargs = hf_convert.bert_config_from_hf(hf_config)  # Validates before any work.
    state_dict = load_hf_state_dict(hf_dir)

    os.makedirs(workdir, exist_ok=True)
    tokenizer = hf_tokenizer.import_tokenizer(hf_dir, workdir, model_kwargs["vocab_size"])
    config = pretraining_config(hf_config, tokenizer)
    model_config = EncoderConfig.from_config(
        config.model, vocab_size=tokenizer.vocab_size, dtype=config.dtype
    )
    tx, _ = make_optimizer(config.optimizer, config.num_train_steps)
    init = functools.partial(
        steps.init_train_state,
        make_model=lambda rngs: PreTrainingModel(model_config, rngs=rngs),
        tx=tx,
    )
    key = jax.random.key(config.seed)
    abstract = jax.eval_shape(init, key, None)
    params, fresh_parts = _partial_params(state_dict, abstract.params, model_config)
    build = functools.partial(_state_with_params, model_config=model_config, tx=tx)
    state = jax.jit(build)(key, params)

    checkpointer = Checkpointer(workdir_lib.checkpoints_dir(workdir))
    checkpointer.save(0, state, config.to_dict())
    checkpointer.wait()
    checkpointer.close()
    files.write_text(os.path.join(workdir, claim.CONFIG_FILE), config.to_json_best_effort(indent=2))
    config_file = os.path.join(workdir, CONFIG_FILE)
    files.write_text(config_file, _config_file_text(config, hf_dir, workdir))
    claim.record_kind(epath.Path(workdir), claim.describe("pretraining", config))
    return Imported(
        num_params=count_params(state.params),
        vocab_size=tokenizer.vocab_size,
        tokenizer_file=str(workdir_lib.tokenizer_file(workdir)),
        fresh_parts=fresh_parts,
        config_file=config_file,
    )
