"""Bad input to pretraining: one `error:` line, exit 2, nothing compiled, nothing trained.

These run `loop.train` in process, exactly as `python -m pretrain.train` calls it (through
`command.run_user_errors_as_one_line`); tests/test_train_cli.py keeps the subprocess checks
(exit status, no traceback) of the command line itself. Inputs that are odd but valid (stray
non-UTF-8 lines, one-sentence documents, lines longer than a sequence) must train.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
import sentencepiece as spm

from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import loop
from tests.cli_utils import (
    LOG_COMPILES,
    MODEL_COMPILE,
    REPO,
    assert_one_line_error,
    read_metrics,
    run_in_process,
    run_module,
    tiny_config,
    tiny_overrides,
    write_corpus,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder with the tiny train/eval corpus of `tiny_config`."""
    folder = tmp_path_factory.mktemp("data")
    tiny_overrides(folder)
    return folder


def _fails(data: Path, workdir: Path, capsys, caplog, *fragments: str, **overrides) -> str:
    """Trains the tiny config plus `overrides`; asserts a one-line user error naming
    `fragments`, before any model compiled or step ran; returns the line."""
    config = tiny_config(data, **overrides)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        code, lines = run_in_process(
            lambda: loop.train(config, str(workdir), PretrainingTask), capsys
        )
    assert code == 2, lines
    assert (
        lines
        and lines[-1].startswith("error: ")
        and len(lines) == 1 + sum(not line.startswith("error: ") for line in lines[:-1])
    ), lines
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    assert not any(MODEL_COMPILE.search(r.getMessage()) for r in caplog.records)
    assert not (workdir / "metrics.jsonl").exists()
    return lines[-1]


def test_empty_training_file(data, tmp_path, capsys, caplog):
    (tmp_path / "empty.txt").write_text("\n\n")
    train = str(tmp_path / "empty.txt")
    _fails(
        data, tmp_path / "w", capsys, caplog, "empty.txt", "holds no text", data__train_files=train
    )


def test_training_path_is_a_folder(data, tmp_path, capsys, caplog):
    _fails(
        data, tmp_path / "w", capsys, caplog, f"'{data}' is a folder, not a file", f"{data}/*.txt",
        data__train_files=str(data),
    )  # fmt: skip


def test_training_file_that_is_not_text(data, tmp_path, capsys, caplog):
    binary = tmp_path / "corpus.txt.gz"
    binary.write_bytes(np.random.default_rng(0).bytes(20_000))
    _fails(
        data, tmp_path / "w", capsys, caplog, str(binary), "is not UTF-8 text",
        data__train_files=str(binary),
    )  # fmt: skip


def test_corpus_of_a_single_document(data, tmp_path, capsys, caplog):
    """NSP draws "random next" segments from other documents: one document cannot work."""
    text = (data / "train.txt").read_text()
    one_document = tmp_path / "one.txt"
    one_document.write_text("\n".join(line for line in text.splitlines() if line.strip()))
    _fails(
        data, tmp_path / "w", capsys, caplog, "NSP needs at least 2 documents with text, got 1",
        data__train_files=str(one_document),
    )  # fmt: skip


def test_missing_eval_files(data, tmp_path, capsys, caplog):
    evals = f"{tmp_path}/nope-*.txt"
    _fails(data, tmp_path / "w", capsys, caplog, "no file matches", evals, data__eval_files=evals)


def test_missing_tokenizer_model(data, tmp_path, capsys, caplog):
    model = f"{tmp_path}/sp.model"
    _fails(
        data, tmp_path / "w", capsys, caplog, f"tokenizer model '{model}' not found",
        data__tokenizer_model=model,
    )  # fmt: skip


def test_corrupt_tokenizer_model(data, tmp_path, capsys, caplog):
    model = tmp_path / "sp.model"
    model.write_bytes(np.random.default_rng(0).bytes(3000))
    _fails(
        data, tmp_path / "w", capsys, caplog, f"'{model}' is not a sentencepiece model",
        data__tokenizer_model=str(model),
    )  # fmt: skip


def test_tokenizer_model_without_bert_special_tokens(data, tmp_path, capsys, caplog):
    """A stock sentencepiece model: <unk>, <s>, </s> at ids 0-2 and no [CLS]/[SEP]/[MASK]."""
    spm.SentencePieceTrainer.train(
        input=str(data / "train.txt"),
        model_prefix=str(tmp_path / "stock"),
        vocab_size=200,
        minloglevel=2,
    )
    _fails(
        data, tmp_path / "w", capsys, caplog, "'<unk>', '<s>', '</s>'",
        "BERT needs ('[PAD]', '[UNK]', '[CLS]'", data__tokenizer_model=f"{tmp_path}/stock.model",
    )  # fmt: skip
    assert not (tmp_path / "w" / "tokenizer.model").exists()  # Refused before being copied.


def test_more_predictions_than_the_sequence_holds(data, tmp_path, capsys, caplog):
    _fails(
        data, tmp_path / "w", capsys, caplog, "max_predictions_per_seq (40)",
        "max_seq_length - 3 (29)", data__max_predictions_per_seq=40,
    )  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(global_batch_size=7), "global_batch_size (7) is not divisible"),
        (dict(data__train_files="/nonexistent/*.txt"), "/nonexistent"),
        (dict(model__num_attention_heads=5), "num_attention_heads"),
    ],
)
def test_config_mistakes(data, tmp_path, capsys, caplog, overrides, message):
    _fails(data, tmp_path / "w", capsys, caplog, message, **overrides)


def test_workdir_below_a_file(data, tmp_path, capsys, caplog):
    (tmp_path / "file").write_text("")
    workdir = tmp_path / "file" / "w"
    _fails(data, workdir, capsys, caplog, "is a file, not a folder", str(workdir))


def test_odd_but_valid_corpus_trains(data, tmp_path, capsys, caplog):
    """Stray non-UTF-8 lines are skipped with a warning; one-sentence documents get a random
    next segment, as in BERT; a line longer than a sequence is truncated to fit."""
    corpus = write_corpus(tmp_path / "train.txt", num_docs=60)
    long_line = " ".join(["word"] * 200) + "."  # ~200 tokens, the sequence holds 32.
    single_sentence_docs = "\n\n".join(f"just one sentence number {i}." for i in range(5))
    with corpus.open("ab") as f:
        f.write(b"\n" + long_line.encode() + b"\n\n" + single_sentence_docs.encode() + b"\n")
        f.write(b"\n\xff\xfe not utf-8\nvalid line after it.\n\xc3\x28 broken\n")
    config = tiny_config(data, data__train_files=str(corpus), data__eval_files="")
    config.num_train_steps = 2
    with caplog.at_level(logging.WARNING):
        code, _ = run_in_process(
            lambda: loop.train(config, str(tmp_path / "w"), PretrainingTask), capsys
        )
    assert code == 0
    assert any(
        "Skipped 2 line(s) that are not valid UTF-8" in r.getMessage() for r in caplog.records
    )
    train, _ = read_metrics(tmp_path / "w")
    assert sorted(train) == [1, 2] and all(np.isfinite(row["loss"]) for row in train.values())


def _unprivileged_prefix() -> list[str]:
    """A command prefix that runs as an ordinary user, or a skip saying why there is none.

    Only root can drop privileges, and only if the unprivileged user can still run this
    interpreter (not so when the project lies in a folder only root may enter, e.g. /root).
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    check = subprocess.run(
        [*prefix, sys.executable, "-c", "import pretrain"], cwd=REPO, capture_output=True
    )
    if check.returncode != 0:
        pytest.skip(
            f"user 'nobody' cannot run {sys.executable} or import the project from here "
            "(a folder only root may enter): the permission error cannot be staged"
        )
    return prefix


@pytest.mark.slow
def test_unreadable_training_file(data):
    """A file without read permission, through the command line (root drops to nobody)."""
    prefix = _unprivileged_prefix()
    # pytest's tmp_path is private to its owner; the unprivileged run needs its own folder.
    folder = Path(tempfile.mkdtemp(prefix="bert-unreadable-"))
    try:
        folder.chmod(0o777)
        corpus = shutil.copy(data / "train.txt", folder / "train.txt")
        Path(corpus).chmod(0)
        proc = run_module(
            "pretrain.train",
            ["--config=configs/smoke.py", f"--workdir={folder / 'w'}", *tiny_overrides(data),
             f"--config.data.train_files={corpus}"],
            check=False, env=LOG_COMPILES, wrapper=prefix,
        )  # fmt: skip
        assert_one_line_error(proc, "Permission denied", str(corpus))
    finally:
        Path(folder / "train.txt").chmod(stat.S_IRUSR | stat.S_IWUSR)
        shutil.rmtree(folder)


def test_negative_warmup(data, tmp_path, capsys, caplog):
    # A warmup longer than the run is clipped to it (tests/test_optimizer.py); a negative one
    # is wrong at any length.
    _fails(
        data, tmp_path / "w", capsys, caplog, "optimizer.warmup_steps must be >= 0, got -3",
        optimizer__warmup_steps=-3,
    )  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(optimizer__b2=1.0), "optimizer.b2=1.0 must be in [0.0, 1.0)"),
        (dict(optimizer__end_learning_rate=1.0), "optimizer.end_learning_rate=1.0"),
        (dict(data__masked_lm_prob=0.0), "masked_lm_prob must be > 0"),
        (dict(seed=-1), "config.seed must be an integer >= 0"),
    ],
)
def test_values_no_run_can_use(data, tmp_path, capsys, caplog, overrides, message):
    _fails(data, tmp_path / "w", capsys, caplog, message, **overrides)


def test_eval_every_steps_0_never_evaluates(data, tmp_path, capsys):
    config = tiny_config(data, eval_every_steps=0, num_train_steps=2)
    code, _ = run_in_process(
        lambda: loop.train(config, str(tmp_path / "w"), PretrainingTask), capsys
    )
    train, evals = read_metrics(tmp_path / "w")
    assert code == 0 and sorted(train) == [1, 2] and not evals
