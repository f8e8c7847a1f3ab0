"""Hugging Face folders to pretraining workdirs (continued pretraining, fine-tuning's init_from).

A local HF BERT or ModernBERT folder (config.json; model.safetensors or pytorch_model.bin,
sharded or not; its tokenizer: WordPiece, or this project's sentencepiece) becomes

    WORKDIR/checkpoints/0/     the TrainState `steps.init_train_state` builds, with HF's
                               parameters, fresh optimizer state, step 0, and the full pretraining
                               config saved beside it exactly as the trainer saves its own
    WORKDIR/vocab.txt | tokenizer.model   the tokenizer (pretrain/training/workdir.py layout)
    WORKDIR/config.json, workdir.json     that config, as a pretraining run writes it
    WORKDIR/pretrain_config.py the same config as a config file, for continued pretraining:
        python -m pretrain.train --config=WORKDIR/pretrain_config.py --workdir=WORKDIR \
            --config.data.train_files=GLOB

BERT imports as MLM + NSP pretraining (configs/default.py), ModernBERT as packed MLM
(configs/modernbert_base.py); these recipe files are read by path (`RECIPE_FILES`), since
configs/ sits above this package. Parts a checkpoint lacks (a `BertForMaskedLM` has no pooler
and no NSP head, a bare encoder no heads) start from our initializer, as in a fresh run, and are
listed in the import summary. ModernBERT's own BPE tokenizer is not among the tokenizers read here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
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

from data_pipeline import files
from data_pipeline.errors import ConfigError, DataError, MissingInputError
from pretrain.hf import convert as hf_convert
from pretrain.hf import tokenizer_files as hf_tokenizer
from pretrain.hf.exporting import HF_CONFIG, HF_WEIGHTS
from pretrain.models.config import EncoderConfig
from pretrain.models.heads import PreTrainingModel
from pretrain.models.params import count_params
from pretrain.training import claim, steps
from pretrain.training import workdir as workdir_lib
from pretrain.training.checkpoint import Checkpointer
from pretrain.training.optimizer import make_optimizer

# Looked for in this order: safetensors first, so torch is needed only for .bin checkpoints.
_WEIGHT_FILES = (
    HF_WEIGHTS,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Parts a checkpoint may lack, by our subtree, with a name for the summary.
_OPTIONAL_PARTS = {
    "bert": {"pooler": ("encoder", "pooler"), "masked-LM head": ("mlm_head",),
             "next-sentence head": ("nsp_head",)},
    "modernbert": {"masked-LM head": ("mlm_head",)},
}  # fmt: skip
CONFIG_FILE = "pretrain_config.py"


@dataclasses.dataclass(frozen=True)
class Imported:
    """What `import_hf_dir` wrote."""

    num_params: int
    vocab_size: int
    tokenizer_file: str
    fresh_parts: list[str]  # Parts the HF checkpoint lacked (pooler, heads), initialized anew.
    config_file: str
    arch: str


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


# The recipe whose defaults an imported workdir takes, by architecture; relative paths are
# resolved against the project root (the folder holding configs/ and pretrain/).
RECIPE_FILES = {"bert": "configs/default.py", "modernbert": "configs/modernbert_base.py"}
_PROJECT_ROOT = epath.Path(__file__).resolve().parents[2]


def load_recipe(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of the config file at `path` (as `--config=PATH` would load it)."""
    file = epath.Path(path) if os.path.isabs(path) else _PROJECT_ROOT / path
    if not file.is_file():
        raise MissingInputError(f"recipe config {file} not found: name an existing config file.")
    spec = importlib.util.spec_from_file_location(f"recipe_{file.stem}", str(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def pretraining_config(
    hf_config: Mapping[str, Any], tokenizer: Any, recipe: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """`recipe` (a copy) with `model.*` from an HF config, `data.*` from its tokenizer."""
    fields = hf_convert.config_from_hf(hf_config)
    config = ml_collections.ConfigDict(recipe.to_dict())
    for key, value in fields.items():
        if key in config.model:
            config.model[key] = value
    data = config.data
    data.vocab_size = tokenizer.vocab_size
    data.lower_case = tokenizer.lower_case
    data.max_seq_length = min(data.max_seq_length, config.model.max_position_embeddings)
    data.max_predictions_per_seq = min(
        data.max_predictions_per_seq, max(round(data.masked_lm_prob * data.max_seq_length), 1)
    )
    return config


def _partial_params(
    state_dict: dict[str, np.ndarray], abstract_params: nnx.State, config: EncoderConfig,
    head: str,
) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """Our pure dict of the HF tensors, without the subtrees of the parts the checkpoint lacks
    (returned by name)."""
    if config.arch == "modernbert" and not any(k.startswith("model.") for k in state_dict):
        state_dict = {f"model.{k}": v for k, v in state_dict.items()}  # A bare ModernBertModel.
    if config.arch == "bert":
        state_dict = hf_convert.bert.normalize(state_dict)
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nnx.to_pure_dict(abstract_params))
    table = hf_convert.ARCHS[config.arch].table(config, head)
    missing = []
    for part, path in _OPTIONAL_PARTS[config.arch].items():
        names = [t.hf_name for t in table if any(p[: len(path)] == path for p in t.paths)]
        if names and not any(n in state_dict for n in names):
            missing.append(part)
    placeholders = hf_convert.to_hf_state_dict(zeros, config, head)
    hf_convert.drop_tied(placeholders, config)
    stand_ins = {k: v for k, v in placeholders.items() if k not in state_dict}
    params = hf_convert.from_hf_state_dict({**stand_ins, **state_dict}, config, head=head)
    for part in missing:  # Stand-ins made the conversion run: drop them, keep the initializer's.
        *parents, leaf = _OPTIONAL_PARTS[config.arch][part]
        node = params
        for key in parents:
            node = node[key]
        del node[leaf]
    return params, missing


def _state_with_params(
    key: jax.Array, params: dict[str, Any], *, make_model: Any, tx: optax.GradientTransformation
) -> steps.TrainState:
    """`init_train_state`'s state with `params` (a pure dict, maybe partial) in place of the
    initializer's values and the optimizer state built for them. Jitted, XLA drops the random
    init of every replaced parameter."""
    state = steps.init_train_state(key, None, make_model=make_model, tx=tx)
    nnx.replace_by_pure_dict(state.params, params)
    return state.replace(opt_state=tx.init(state.params))


def _config_file_text(
    config: ml_collections.ConfigDict, base: ml_collections.ConfigDict, base_name: str,
    hf_dir: str, workdir: str,
) -> str:  # fmt: skip
    """A config file (like configs/*.py) that reproduces `config`: its base plus changes."""
    changes = [
        f"    c.{group}.{key} = {config[group][key]!r}"
        for group in ("model", "data")
        for key in config[group]
        if config[group][key] != base[group][key]
    ]
    path = os.path.join(workdir, CONFIG_FILE)
    return "\n".join([
        f'"""Continued pretraining of the {config.model.arch} model imported from {hf_dir}.',
        "",
        "Written by `python -m pretrain.import_hf`; model.* and data.* match the imported",
        "checkpoint and tokenizer. Run (with any other --config.KEY=VALUE):",
        "",
        f"    python -m pretrain.train --config={path} --workdir={workdir} \\\\",
        "        --config.data.train_files=GLOB",
        '"""',
        "",
        f"from configs import {base_name}",
        "",
        "",
        "def get_config():",
        f"    c = {base_name}.get_config()",
        *changes,
        "    return c",
        "",
    ])  # fmt: skip


def import_hf_dir(
    hf_dir: str, workdir: str, recipe_files: Mapping[str, str] | None = None
) -> Imported:
    """Turns the HF folder `hf_dir` into the pretraining workdir `workdir` (new or empty), with
    the defaults of the recipe config of its architecture (`RECIPE_FILES` unless given)."""
    config_path = os.path.join(hf_dir, HF_CONFIG)
    if not os.path.isfile(config_path):
        raise MissingInputError(
            f"{config_path} not found: --hf_dir must be a local HF model folder."
        )
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise ConfigError(f"{workdir} is not empty: import into a new --workdir.")
    with open(config_path, encoding="utf-8") as f:
        hf_config = json.load(f)
    model_kwargs = hf_convert.config_from_hf(hf_config)  # Validates before any work.
    recipe_file = {**RECIPE_FILES, **(recipe_files or {})}[model_kwargs["arch"]]
    recipe = load_recipe(recipe_file)
    state_dict = load_hf_state_dict(hf_dir)

    os.makedirs(workdir, exist_ok=True)
    tokenizer = hf_tokenizer.import_tokenizer(hf_dir, workdir, model_kwargs["vocab_size"])
    config = pretraining_config(hf_config, tokenizer, recipe)
    model_config = EncoderConfig.from_config(
        config.model, vocab_size=tokenizer.vocab_size, dtype=config.dtype
    )
    nsp = config.data.objective == "nsp"
    make_model = lambda rngs: PreTrainingModel(model_config, with_nsp=nsp, rngs=rngs)
    tx, _ = make_optimizer(config.optimizer, config.num_train_steps)
    init = functools.partial(steps.init_train_state, make_model=make_model, tx=tx)
    key = jax.random.key(config.seed)
    abstract = jax.eval_shape(init, key, None)
    head = "pretraining" if nsp else "masked_lm"
    params, fresh_parts = _partial_params(state_dict, abstract.params, model_config, head)
    build = functools.partial(_state_with_params, make_model=make_model, tx=tx)
    state = jax.jit(build)(key, params)

    checkpointer = Checkpointer(workdir_lib.checkpoints_dir(workdir))
    checkpointer.save(0, state, config.to_dict())
    checkpointer.wait()
    checkpointer.close()
    files.write_text(os.path.join(workdir, claim.CONFIG_FILE), config.to_json_best_effort(indent=2))
    config_file = os.path.join(workdir, CONFIG_FILE)
    text = _config_file_text(config, recipe, epath.Path(recipe_file).stem, hf_dir, workdir)
    files.write_text(config_file, text)
    claim.record_kind(epath.Path(workdir), claim.describe("pretraining", config))
    return Imported(
        num_params=count_params(state.params),
        vocab_size=tokenizer.vocab_size,
        tokenizer_file=str(workdir_lib.tokenizer_file(workdir)),
        fresh_parts=fresh_parts,
        config_file=config_file,
        arch=model_config.arch,
    )
