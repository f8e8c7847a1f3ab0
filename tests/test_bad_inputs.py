"""Bad input to `python -m pretrain.train`: one `error:` line, exit 2, no traceback, no compile.

One test per mistake (see `assert_one_line_error` for what each run must show). Also covered in
tests/test_train_cli.py: a misspelled config key, a global batch that does not split over the
devices, missing training files, and heads that do not divide the hidden size. Inputs that are
odd but valid (stray non-UTF-8 lines, one-sentence documents, lines longer than a sequence) must
train.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from tests.cli_utils import (
    LOG_COMPILES,
    assert_one_line_error,
    read_metrics,
    run_module,
    tiny_overrides,
    write_corpus,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder with the tiny train/eval corpus of `tiny_overrides`."""
    folder = tmp_path_factory.mktemp("data")
    tiny_overrides(folder)
    return folder


def _train(data: Path, workdir: Path, *overrides: str, **kwargs) -> object:
    """Runs the CLI on the tiny config plus `overrides` (later overrides win)."""
    return run_module(
        "pretrain.train",
        ["--config=configs/smoke.py", f"--workdir={workdir}", *tiny_overrides(data), *overrides],
        check=False,
        env=LOG_COMPILES,
        **kwargs,
    )


def test_empty_training_file(data, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    proc = _train(data, tmp_path / "w", f"--config.data.train_files={tmp_path / 'empty.txt'}")
    assert_one_line_error(proc, "empty.txt", "holds no text")


def test_training_path_is_a_folder(data, tmp_path):
    proc = _train(data, tmp_path / "w", f"--config.data.train_files={data}")
    assert_one_line_error(proc, f"'{data}' is a folder, not a file", f"{data}/*.txt")


def test_training_file_that_is_not_text(data, tmp_path):
    binary = tmp_path / "corpus.txt.gz"
    binary.write_bytes(np.random.default_rng(0).bytes(20_000))
    proc = _train(data, tmp_path / "w", f"--config.data.train_files={binary}")
    assert_one_line_error(proc, str(binary), "is not UTF-8 text")


def test_unreadable_training_file(data):
    """A file without read permission. Root reads anything, so as root the run drops to nobody."""
    command_prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        command_prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # pytest's tmp_path is private to its owner; the unprivileged run needs its own folder.
    folder = Path(tempfile.mkdtemp(prefix="bert-unreadable-"))
    try:
        folder.chmod(0o777)
        corpus = shutil.copy(data / "train.txt", folder / "train.txt")
        Path(corpus).chmod(0)
        proc = _train(
            data,
            folder / "w",
            f"--config.data.train_files={corpus}",
            wrapper=command_prefix,
        )
        assert_one_line_error(proc, "Permission denied", str(corpus))
    finally:
        Path(folder / "train.txt").chmod(stat.S_IRUSR | stat.S_IWUSR)
        shutil.rmtree(folder)


def test_corpus_of_a_single_document(data, tmp_path):
    """NSP draws "random next" segments from other documents: one document cannot work."""
    text = (data / "train.txt").read_text()
    one_document = tmp_path / "one.txt"
    one_document.write_text("\n".join(line for line in text.splitlines() if line.strip()))
    proc = _train(data, tmp_path / "w", f"--config.data.train_files={one_document}")
    assert_one_line_error(proc, "NSP needs at least 2 documents with text, got 1")


def test_missing_eval_files(data, tmp_path):
    proc = _train(data, tmp_path / "w", f"--config.data.eval_files={tmp_path}/nope-*.txt")
    assert_one_line_error(proc, "no file matches", "nope-*.txt")


def test_missing_tokenizer_model(data, tmp_path):
    proc = _train(data, tmp_path / "w", f"--config.data.tokenizer_model={tmp_path}/sp.model")
    assert_one_line_error(proc, f"tokenizer model '{tmp_path}/sp.model' not found")


def test_corrupt_tokenizer_model(data, tmp_path):
    model = tmp_path / "sp.model"
    model.write_bytes(np.random.default_rng(0).bytes(3000))
    proc = _train(data, tmp_path / "w", f"--config.data.tokenizer_model={model}")
    assert_one_line_error(proc, f"'{model}' is not a sentencepiece model")


def test_tokenizer_model_without_bert_special_tokens(data, tmp_path):
    """A stock sentencepiece model: <unk>, <s>, </s> at ids 0-2 and no [CLS]/[SEP]/[MASK]."""
    spm.SentencePieceTrainer.train(
        input=str(data / "train.txt"),
        model_prefix=str(tmp_path / "stock"),
        vocab_size=200,
        minloglevel=2,
    )
    proc = _train(data, tmp_path / "w", f"--config.data.tokenizer_model={tmp_path}/stock.model")
    assert_one_line_error(proc, "'<unk>', '<s>', '</s>'", "BERT needs ('[PAD]', '[UNK]', '[CLS]'")
    assert not (tmp_path / "w" / "tokenizer.model").exists()  # Refused before being copied.


def test_config_value_of_the_wrong_type(data, tmp_path):
    proc = _train(data, tmp_path / "w", "--config.model.hidden_size=1.5")
    assert_one_line_error(proc, "--config.model.hidden_size=1.5")


def test_more_predictions_than_the_sequence_holds(data, tmp_path):
    proc = _train(data, tmp_path / "w", "--config.data.max_predictions_per_seq=40")
    assert_one_line_error(proc, "max_predictions_per_seq (40)", "max_seq_length - 3 (29)")


def test_workdir_below_a_file(data, tmp_path):
    (tmp_path / "file").write_text("")
    proc = _train(data, tmp_path / "file" / "w")
    assert_one_line_error(proc, "is a file, not a folder", str(tmp_path / "file" / "w"))


def test_odd_but_valid_corpus_trains(data, tmp_path):
    """Stray non-UTF-8 lines are skipped with a warning; one-sentence documents get a random
    next segment, as in BERT; a line longer than a sequence is truncated to fit."""
    corpus = write_corpus(tmp_path / "train.txt", num_docs=60)
    long_line = " ".join(["word"] * 200) + "."  # ~200 tokens, the sequence holds 32.
    single_sentence_docs = "\n\n".join(f"just one sentence number {i}." for i in range(5))
    with corpus.open("ab") as f:
        f.write(b"\n" + long_line.encode() + b"\n\n" + single_sentence_docs.encode() + b"\n")
        f.write(b"\n\xff\xfe not utf-8\nvalid line after it.\n\xc3\x28 broken\n")
    proc = _train(
        data,
        tmp_path / "w",
        f"--config.data.train_files={corpus}",
        "--config.num_train_steps=2",
        "--config.optimizer.decay=constant",  # The train step the other CLI tests compiled.
        "--config.data.eval_files=",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Skipped 2 line(s) that are not valid UTF-8 in 1 file(s)" in proc.stderr
    train, _ = read_metrics(tmp_path / "w")
    assert sorted(train) == [1, 2] and all(np.isfinite(row["loss"]) for row in train.values())
