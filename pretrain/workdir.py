"""The layout of a workdir, shared by pretraining, fine-tuning and the Hugging Face tools.

WORKDIR/config.json          the run's config
WORKDIR/tokenizer.model      the sentencepiece model every stage tokenizes with, or instead
WORKDIR/vocab.txt            a WordPiece vocabulary (imported from Hugging Face), with its
WORKDIR/tokenizer_config.json  normalization options (data_pipeline/wordpiece.py)
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
from data_pipeline import wordpiece
from pretrain.metrics import status

TOKENIZER_FILE = "tokenizer.model"
WORDPIECE_FILE = wordpiece.VOCAB_FILE
CHECKPOINTS_DIR = "checkpoints"


def tokenizer_path(workdir: str | epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / TOKENIZER_FILE


def tokenizer_file(workdir: str | epath.PathLike) -> epath.Path:
    """The workdir's tokenizer: `vocab.txt` (WordPiece) when present, else `tokenizer.model`.

    Load it with `data_pipeline.tokenizer.load_tokenizer`.
    """
    wordpiece_path = epath.Path(workdir) / WORDPIECE_FILE
    return wordpiece_path if wordpiece_path.exists() else tokenizer_path(workdir)


def checkpoints_dir(workdir: str | epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINTS_DIR


def prepare_tokenizer(
    data_config: ml_collections.ConfigDict, workdir: epath.Path
) -> tokenizer_lib.Tokenizer | wordpiece.WordPieceTokenizer:
    """The workdir's tokenizer: copied from `data.tokenizer_model`, or trained on first start.

    `data.tokenizer_model` is a sentencepiece `.model` or a WordPiece `vocab.txt` (copied with
    its options). Process 0 writes it; the others wait at a barrier, then every process loads
    the same file. A restart finds the file and reuses it, so ids never change within a run.
    """
    if jax.process_index() == 0 and not tokenizer_file(workdir).exists():
        target = tokenizer_path(workdir)
        if data_config.tokenizer_model:
            # Validate before copying.
            source = tokenizer_lib.load_tokenizer(data_config.tokenizer_model)
            if isinstance(source, wordpiece.WordPieceTokenizer):
                source.save(str(workdir))
            else:
                epath.Path(data_config.tokenizer_model).copy(target)
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
    return tokenizer_lib.load_tokenizer(str(tokenizer_file(workdir)))
