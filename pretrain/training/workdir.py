"""The layout of a workdir, shared by pretraining, fine-tuning and the Hugging Face tools.

WORKDIR/config.json          the run's config
WORKDIR/tokenizer.model      the sentencepiece model every stage tokenizes with, or instead
WORKDIR/vocab.txt            a WordPiece vocabulary (imported from Hugging Face), with its
WORKDIR/tokenizer_config.json  normalization options (data_pipeline/vocab/wordpiece.py)
WORKDIR/checkpoints/<step>/  orbax checkpoints (pretrain/training/checkpoint.py)
WORKDIR/best/<step>/         fine-tuning: the checkpoint with the best eval metric
WORKDIR/metrics.jsonl        metrics rows (pretrain/training/metrics.py)
WORKDIR/data_cache/          corpora built from text on first start, reused on restart

WORKDIR may be any etils path (gs://bucket/run): everything here goes through epath; what
tools read as plain files (the tokenizer, the instance cache) is mirrored in `local_dir`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import jax
import ml_collections
from etils import epath
from jax.experimental import multihost_utils

from data_pipeline import records, vocab
from data_pipeline.errors import MissingInputError
from data_pipeline.vocab import unigram, wordpiece
from pretrain.training.checkpoint import Checkpointer
from pretrain.training.metrics import status

TOKENIZER_FILE = "tokenizer.model"
WORDPIECE_FILE = wordpiece.VOCAB_FILE
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"  # Fine-tuning: the checkpoint with the best eval metric.
QUANTIZED_MARKER = "quantization.json"  # A `pretrain.quantize` output (pretrain/inference/).
# Every file a workdir's tokenizer may consist of (sentencepiece or WordPiece).
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer.vocab", WORDPIECE_FILE, wordpiece.CONFIG_FILE)


def tokenizer_path(workdir: str | epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / TOKENIZER_FILE


def tokenizer_file(workdir: str | epath.PathLike) -> epath.Path:
    """The workdir's tokenizer: `vocab.txt` (WordPiece) when present, else `tokenizer.model`.

    Load it with `data_pipeline.vocab.load`.
    """
    wordpiece_path = epath.Path(workdir) / WORDPIECE_FILE
    return wordpiece_path if wordpiece_path.exists() else tokenizer_path(workdir)


def checkpoints_dir(workdir: str | epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINTS_DIR


def finetuned_checkpoints(workdir: str | epath.PathLike, step: int | None = None) -> epath.Path:
    """Where a fine-tuned model is read from: WORKDIR/best when it holds a checkpoint and no step
    is asked for, else WORKDIR/checkpoints."""
    workdir = epath.Path(workdir)
    best = workdir / BEST_DIR
    if step is None and best.is_dir() and any(p.name.isdigit() for p in best.iterdir()):
        return best
    directory = checkpoints_dir(workdir)
    if not directory.is_dir():
        raise MissingInputError(
            f"{workdir} has no checkpoints: --workdir must be a `pretrain.finetune` workdir."
        )
    return directory


def is_local(path: str | epath.PathLike) -> bool:
    """False for URIs (gs://, s3://), which only epath reaches, not open() or os.path."""
    return "://" not in os.fspath(path)


def local_dir(workdir: str | epath.PathLike) -> epath.Path:
    """This host's folder for the workdir files that tools read as plain files.

    The workdir itself when it is local; for a remote one, a folder of the system temp dir
    named after it.
    """
    if is_local(workdir):
        return epath.Path(workdir)
    key = hashlib.sha256(os.fspath(workdir).encode()).hexdigest()[:16]
    return epath.Path(tempfile.gettempdir()) / f"bert-jax-workdir-{key}"


def data_cache_dir(workdir: str | epath.PathLike) -> str:
    """Where corpora built from text are cached: a local path on every host."""
    return os.fspath(local_dir(workdir) / "data_cache")


def _copy_tokenizer(source: epath.Path, dest: epath.Path) -> None:
    """Copies the tokenizer files between a remote workdir and its local folder."""
    if os.fspath(source) == os.fspath(dest):
        return
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            (source / name).copy(dest / name, overwrite=True)


def prepare_tokenizer(
    data_config: ml_collections.ConfigDict, workdir: epath.Path
) -> vocab.Tokenizer:
    """The workdir's tokenizer: copied from `data.tokenizer_model`, or trained on first start.

    `data.tokenizer_model` is a sentencepiece `.model` or a WordPiece `vocab.txt` (copied with
    its options). Process 0 writes it; the others wait at a barrier, then every process loads
    the same file. A restart finds the file and reuses it, so ids never change within a run.
    A remote workdir's tokenizer is made and loaded in `local_dir` and copied through epath.
    """
    local = local_dir(workdir)
    if jax.process_index() == 0 and not tokenizer_file(workdir).exists():
        local.mkdir(parents=True, exist_ok=True)
        target = tokenizer_path(local)
        tokenizer_model = data_config.tokenizer_model
        train_files = data_config.get("train_files", "")
        if not tokenizer_model and records.is_built_dir(train_files):
            # Built shards fix the ids: use the tokenizer they were made with.
            built = epath.Path(train_files.strip())
            tokenizer_model = str(tokenizer_file(built))
        if tokenizer_model:
            # Validate before copying.
            source = vocab.load(tokenizer_model)
            if isinstance(source, wordpiece.WordPieceTokenizer):
                source.save(str(local))
            else:
                epath.Path(tokenizer_model).copy(target, overwrite=True)
        else:
            status(f"Training a {data_config.vocab_size}-piece tokenizer into {workdir}.")
            prefix = str(target)[: -len(".model")]
            unigram.train_tokenizer(
                data_config.train_files.split(","),
                vocab_size=data_config.vocab_size,
                output_prefix=prefix,
                lower_case=data_config.lower_case,
            )
        _copy_tokenizer(local, workdir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("tokenizer ready")
    _copy_tokenizer(workdir, local)
    return vocab.load(str(tokenizer_file(local)))


def latest_checkpoint(workdir: str | epath.PathLike) -> tuple[int, dict]:
    """(newest complete checkpoint step, the config saved with it) of a pretraining workdir.

    Raises MissingInputError naming what is missing when `workdir` has no tokenizer or no
    complete checkpoint (a step folder still being written does not count).
    """
    workdir = epath.Path(workdir)
    if not workdir.is_dir():
        raise MissingInputError(f"{workdir} does not exist: point at a pretraining workdir.")
    if not tokenizer_file(workdir).exists():
        raise MissingInputError(
            f"{workdir} has no {TOKENIZER_FILE} or {WORDPIECE_FILE}: it is not a workdir of "
            "`pretrain.train` or `pretrain.import_hf`."
        )
    directory = checkpoints_dir(workdir)
    checkpointer = Checkpointer(directory) if directory.is_dir() else None
    step = checkpointer.latest_step() if checkpointer else None
    if step is None:
        raise MissingInputError(
            f"{directory} holds no complete checkpoint: pretrain first (checkpoints are written "
            "every config.checkpoint_every_steps and at the end)."
        )
    config = checkpointer.read_config(step)
    checkpointer.close()
    return step, config
