"""Tokenizer: special-token layout, normalization, round trip, validation and the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from data_pipeline.vocab import unigram as tok_lib


def test_special_tokens_sit_at_fixed_ids(pipeline_tokenizer):
    t = pipeline_tokenizer
    assert t.vocab_size == 256
    assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) == (0, 1, 2, 3, 4)
    assert [t.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert t.special_ids == {0, 1, 2, 3, 4}
    assert t.piece_to_id("[MASK]") == 4


def test_control_tokens_never_come_out_of_encode(pipeline_tokenizer):
    ids = pipeline_tokenizer.encode("[CLS] abc [SEP] [MASK] [PAD]")
    assert not {0, 2, 3, 4} & set(ids)


def test_round_trip_is_lower_cased(pipeline_tokenizer, pipeline_corpus):
    t = pipeline_tokenizer
    assert t.lower_case
    sentence = pipeline_corpus[1][0][0]  # Capitalized by the corpus writer.
    assert sentence != sentence.lower()
    assert t.decode(t.encode(sentence)) == sentence.lower()
    assert t.encode(sentence) == t.encode(sentence.upper())
    # Batch encoding is the same as one at a time.
    first = [s for d in pipeline_corpus[1][:3] for s in d]
    assert t.encode_batch(first) == [t.encode(s) for s in first]


def test_cased_model_keeps_case(pipeline_corpus, tmp_path):
    path = tok_lib.train_tokenizer(
        [str(pipeline_corpus[0])], 200, str(tmp_path / "cased"), lower_case=False
    )
    t = tok_lib.SentencePieceTokenizer(path)
    sentence = pipeline_corpus[1][0][0]
    assert not t.lower_case
    assert t.decode(t.encode(sentence)) == sentence


def test_is_word_start_marks_pieces_beginning_with_the_space_symbol(pipeline_tokenizer):
    t = pipeline_tokenizer
    expected = [t.id_to_piece(i).startswith("\u2581") for i in range(t.vocab_size)]
    assert t.is_word_start.dtype == np.bool_
    assert t.is_word_start.tolist() == expected
    assert 0 < t.is_word_start.sum() < t.vocab_size
    # The first piece of every encoded word starts it.
    assert t.is_word_start[t.encode("abc defg")[0]]


def test_writes_vocab_file(pipeline_tokenizer):
    lines = open(pipeline_tokenizer.model_path[: -len(".model")] + ".vocab").read().splitlines()
    assert len(lines) == pipeline_tokenizer.vocab_size
    assert lines[0].split("\t") == ["[PAD]", "0"]
    assert lines[7].split("\t")[0] == pipeline_tokenizer.id_to_piece(7)


def test_vocab_larger_than_text_supports_is_a_clear_error(pipeline_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=20000 is too large .* at most \d+ pieces"):
        tok_lib.train_tokenizer([str(pipeline_corpus[0])], 20000, str(tmp_path / "big"))
    with pytest.raises(ValueError, match="vocab_size=12 is too small"):
        tok_lib.train_tokenizer([str(pipeline_corpus[0])], 12, str(tmp_path / "small"))
    assert not list(tmp_path.iterdir())  # Nothing half-written.


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        tok_lib.train_tokenizer([str(tmp_path / "missing*.txt")], 100, str(tmp_path / "m"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no text"):
        tok_lib.train_tokenizer([str(tmp_path / "empty.txt")], 100, str(tmp_path / "m"))


def test_load_validates_the_model(tmp_path, pipeline_corpus):
    with pytest.raises(FileNotFoundError, match="not found"):
        tok_lib.SentencePieceTokenizer(str(tmp_path / "missing.model"))
    (tmp_path / "garbage.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a sentencepiece model"):
        tok_lib.SentencePieceTokenizer(str(tmp_path / "garbage.model"))
    # sentencepiece's default layout (<unk>, <s>, </s>) lacks BERT's specials.
    spm.SentencePieceTrainer.train(
        input=str(pipeline_corpus[0]),
        model_prefix=str(tmp_path / "plain"),
        vocab_size=100,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match=r"BERT needs \('\[PAD\]'"):
        tok_lib.SentencePieceTokenizer(str(tmp_path / "plain.model"))


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "data_pipeline.tokenizer", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_cli_writes_model_and_vocab(pipeline_corpus, tmp_path):
    corpus = pipeline_corpus[0]
    prefix = tmp_path / "out" / "sp"
    result = _run_cli(
        f"--input={corpus.parent}/*.txt,{corpus}", "--vocab_size=150", f"--output_prefix={prefix}"
    )
    assert result.returncode == 0, result.stderr
    assert "tokenizer: read" in result.stderr  # Progress line.
    assert tok_lib.SentencePieceTokenizer(str(prefix) + ".model").vocab_size == 150
    assert len(open(str(prefix) + ".vocab").read().splitlines()) == 150


@pytest.mark.slow
def test_cli_bad_input_exits_with_one_line(tmp_path):
    result = _run_cli(
        f"--input={tmp_path}/nothing*.txt", "--vocab_size=100", f"--output_prefix={tmp_path}/x"
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: no file matches '{tmp_path}/nothing*.txt': check the path or glob"
    ]


def test_sentence_sample_is_uniform_and_seeded():
    counts = np.zeros(50)
    for seed in range(2000):
        sample = tok_lib.reservoir_sample(map(str, range(50)), 5, seed)
        assert len(set(sample)) == 5
        counts[[int(x) for x in sample]] += 1
    # Each item is kept with probability 5/50: 200 of 2000 draws, binomial sd ~13.4.
    assert np.all(np.abs(counts - 200) < 60), counts
    assert tok_lib.reservoir_sample(map(str, range(50)), 5, 7) == tok_lib.reservoir_sample(
        map(str, range(50)), 5, 7
    )
    assert tok_lib.reservoir_sample(["a", "b"], 5, 0) == ["a", "b"]


@pytest.mark.slow
def test_sampled_training_gives_the_same_model_in_every_process(tmp_path):
    # sentencepiece's own sampler draws a fresh seed per process; every host of a multi-host
    # run trains its own tokenizer from the same files and must get the same one.
    script = (
        "import sys; from data_pipeline.vocab import unigram as t; "
        "t.train_tokenizer(['data/sample/train.txt'], 300, sys.argv[1], input_sentence_size=2000)"
    )
    models = []
    for i in range(2):
        prefix = str(tmp_path / f"sp{i}")
        subprocess.run([sys.executable, "-c", script, prefix], check=True, capture_output=True)
        models.append((tmp_path / f"sp{i}.model").read_bytes())
    assert models[0] == models[1]
