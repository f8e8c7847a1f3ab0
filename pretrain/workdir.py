"""The layout of a workdir, shared by pretraining, fine-tuning and the Hugging Face tools.

WORKDIR/config.json          the run's config
WORKDIR/tokenizer.model      the sentencepiece model every stage tokenizes with
WORKDIR/checkpoints/<step>/  orbax checkpoints (pretrain/checkpoint.py)
WORKDIR/metrics.jsonl        metrics rows (pretrain/metrics.py)
WORKDIR/data_cache/          instance stores built from the text, reused on restart
"""

from __future__ import annotations

import jax
import ml_collections
from etils import epath
from jax.experimental import multihost_utils

from data_pipeline import tokenizer as tokenizer_lib
from pretrain.metrics import status

TOKENIZER_FILE = "tokenizer.model"
CHECKPOINTS_DIR = "checkpoints"


def tokenizer_path(workdir: str | epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / TOKENIZER_FILE


def checkpoints_dir(workdir: str | epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINTS_DIR


def prepare_tokenizer(
    data_config: ml_collections.ConfigDict, workdir: epath.Path
) -> tokenizer_lib.Tokenizer:
    """The workdir's tokenizer: copied from `data.tokenizer_model`, or trained on first start.

    Process 0 writes it; the others wait at a barrier, then every process loads the same file.
    A restart finds the file and reuses it, so ids never change within a run.
    """
    target = tokenizer_path(workdir)
    if jax.process_index() == 0 and not target.exists():
        if data_config.tokenizer_model:
            source = epath.Path(data_config.tokenizer_model)
            tokenizer_lib.Tokenizer(str(source))  # Validate before copying.
            source.copy(target)
        else:
            status(f"Training a {data_config.vocab_size}-piece tokenizer into {target}.")
            prefix = str(target)[: -len(".model")]
            tokenizer_lib.train_tokenizer(
                data_config.train_files.split(","),
                vocab_size=data_config.vocab_size,
                output_prefix=prefix,
                lower_case=data_config.lower_case,
            )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("tokenizer ready")
    return tokenizer_lib.Tokenizer(str(target))
