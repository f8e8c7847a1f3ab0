"""Pretokenized shards: same instances as the in-memory build, resumable, checked on reading."""

import json

import numpy as np
import pytest

from data_pipeline import loader, pretokenize
from data_pipeline.vocab.unigram import SentencePieceTokenizer as Tokenizer

STORE_ARGS = dict(seed=3, max_seq_length=48, short_seq_prob=0.1, random_next_prob=0.5)
CHUNK_MB = 2500 / 2**20  # ~2.5 KB units: several per file.


@pytest.fixture(scope="module")
def corpus(pipeline_corpus, tmp_path_factory):
    """Two files: the session corpus, and one with CRLF endings, runs of blank lines, a line that
    is not UTF-8 and no final newline (each a way a chunk boundary could go wrong)."""
    folder = tmp_path_factory.mktemp("pretokenize_corpus")
    (folder / "a.txt").write_bytes(pipeline_corpus[0].read_bytes())
    documents = pipeline_corpus[1]
    text = "\r\n\r\n\r\n".join("\r\n".join(doc) for doc in documents[::-1][:30])
    (folder / "b.txt").write_bytes(b"\xff\xfe bad line\r\n" + text.encode())
    return str(folder / "*.txt")


@pytest.fixture(scope="module")
def in_memory_store(corpus, pipeline_tokenizer):
    return loader.load_or_build_store(corpus, pipeline_tokenizer, dupe_factor=2, **STORE_ARGS)


def _assert_stores_equal(a, b):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.spans, b.spans)
    np.testing.assert_array_equal(a.is_random_next, b.is_random_next)
    assert a.max_seq_length == b.max_seq_length


def _build(corpus, tokenizer, out, **kwargs):
    return pretokenize.pretokenize(
        corpus, tokenizer.model_path, str(out), chunk_mb=CHUNK_MB, num_workers=2, **kwargs
    )


def test_shards_give_the_in_memory_store(corpus, pipeline_tokenizer, in_memory_store, tmp_path):
    totals = _build(corpus, pipeline_tokenizer, tmp_path)
    manifest = json.loads((tmp_path / pretokenize.MANIFEST).read_text())
    assert totals["shards"] == len(manifest["units"]) > 4  # Files really were split.
    assert pretokenize.is_pretokenized(str(tmp_path))
    store = loader.load_or_build_store(
        str(tmp_path), pipeline_tokenizer, dupe_factor=2, **STORE_ARGS
    )
    _assert_stores_equal(store, in_memory_store)
    # The tokenizer travels with the shards.
    assert Tokenizer(str(tmp_path / "tokenizer.model")).fingerprint == (
        pipeline_tokenizer.fingerprint
    )


def test_interrupted_build_resumes(corpus, pipeline_tokenizer, in_memory_store, tmp_path):
    # Host 1 of 2 never ran: half the shards are missing and the loader says so.
    first = _build(corpus, pipeline_tokenizer, tmp_path, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="incomplete"):
        pretokenize.read_documents(str(tmp_path), pipeline_tokenizer)
    # A worker killed mid-write leaves only a temporary file, never a partial shard.
    (tmp_path / ".tmp-shard-00001.npz-999").write_bytes(b"partial")
    done = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.npz")}

    resumed = _build(corpus, pipeline_tokenizer, tmp_path)
    assert resumed["skipped"] == len(done) == first["shards"]
    assert resumed["shards"] - resumed["skipped"] == resumed["shards"] - first["shards"] > 0
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in done} == done  # Not rewritten.
    store = loader.load_or_build_store(
        str(tmp_path), pipeline_tokenizer, dupe_factor=2, **STORE_ARGS
    )
    _assert_stores_equal(store, in_memory_store)


def test_a_different_build_into_the_same_directory_is_refused(corpus, pipeline_tokenizer, tmp_path):
    _build(corpus, pipeline_tokenizer, tmp_path, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="different pretokenized build.*chunk_bytes"):
        pretokenize.pretokenize(
            corpus, pipeline_tokenizer.model_path, str(tmp_path), chunk_mb=1.0, num_workers=1
        )


def test_reading_with_another_tokenizer_is_refused(
    corpus, pipeline_tokenizer, tmp_path, tmp_path_factory
):
    from data_pipeline.vocab import unigram as tokenizer_lib

    _build(corpus, pipeline_tokenizer, tmp_path)
    prefix = tmp_path_factory.mktemp("other_tokenizer") / "sp"
    other = Tokenizer(tokenizer_lib.train_tokenizer([corpus], 200, str(prefix)))
    with pytest.raises(ValueError, match="another tokenizer.*tokenizer.model"):
        pretokenize.read_documents(str(tmp_path), other)
