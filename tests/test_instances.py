"""NSP instances: BERT's recipe properties, truncation, determinism and the store format."""

import numpy as np
import pytest

from data_pipeline import instances

DOC_STRIDE = 100_000  # Document d holds tokens d * DOC_STRIDE + 0, 1, 2, ... in order.


def _numbered_documents(num_docs, rng, sentences=(1, 12), tokens=(1, 20)):
    """Documents whose tokens count up from d * DOC_STRIDE, so any token names its document and
    its place in it."""
    docs = []
    for d in range(num_docs):
        lengths = rng.integers(*tokens, size=rng.integers(*sentences))
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        docs.append([d * DOC_STRIDE + np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])])
    return docs


def _build(docs, **overrides):
    args = dict(seed=0, max_seq_length=32, short_seq_prob=0.1, random_next_prob=0.5, dupe_factor=1)
    return instances.build_instance_store(docs, **{**args, **overrides})


def _naive_truncation(len_a, len_b, max_num_tokens):
    """BERT's truncate_seq_pair loop, counting removals instead of flipping coins."""
    cut_a = cut_b = 0
    while (len_a - cut_a) + (len_b - cut_b) > max_num_tokens:
        if len_a - cut_a > len_b - cut_b:
            cut_a += 1
        else:
            cut_b += 1
    return cut_a, cut_b


def test_truncation_counts_match_bert_loop():
    for len_a in range(0, 15):
        for len_b in range(0, 15):
            for max_num_tokens in range(2, 20):
                assert instances.truncation_counts(
                    len_a, len_b, max_num_tokens
                ) == _naive_truncation(len_a, len_b, max_num_tokens)


def test_segments_are_contiguous_and_come_from_the_right_documents():
    rng = np.random.default_rng(0)
    store = _build(_numbered_documents(40, rng), dupe_factor=3)
    assert len(store) > 100
    for i in range(len(store)):
        a, b, is_random_next = store[i]
        assert len(a) >= 1 and len(b) >= 1
        assert len(a) + len(b) <= 32 - 3
        # Truncation only trims ends, so each segment is a run of consecutive tokens.
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)
        doc_a, doc_b = a[0] // DOC_STRIDE, b[0] // DOC_STRIDE
        if is_random_next:
            assert doc_a != doc_b
        else:
            assert doc_a == doc_b and b[0] > a[-1]  # B follows A in the same document.


def test_nsp_labels_are_balanced():
    # Many short sentences, so (almost) every chunk has two or more and the label is a coin flip.
    rng = np.random.default_rng(1)
    docs = _numbered_documents(90, rng, sentences=(80, 120), tokens=(1, 4))
    store = _build(docs, short_seq_prob=0.0, dupe_factor=2)
    # ~1800 instances: the standard error of the fraction is 0.012; 0.05 is > 4 of them.
    assert len(store) > 1500
    assert abs(store.is_random_next.mean() - 0.5) < 0.05
    # Put-back sentences make random-next instances a little more frequent than the coin (BERT
    # behaves the same), so the low setting gets a one-sided allowance.
    low = _build(docs, short_seq_prob=0.0, dupe_factor=2, random_next_prob=0.1)
    assert 0.08 < low.is_random_next.mean() < 0.14
    never = _build(docs, short_seq_prob=0.0, dupe_factor=2, random_next_prob=0.0)
    assert never.is_random_next.mean() < 0.02  # Only the forced single-sentence chunks.


def test_single_sentence_chunks_always_take_a_random_next():
    docs = [[np.arange(d * 10, d * 10 + 5)] for d in range(5)]  # One sentence each.
    store = _build(docs, random_next_prob=0.0)
    assert len(store) == 5
    assert store.is_random_next.all()


def test_short_seq_prob_shortens_instances():
    docs = _numbered_documents(40, np.random.default_rng(2), sentences=(20, 30), tokens=(2, 6))

    def mean_length(store):
        return np.mean([len(a) + len(b) for a, b, _ in (store[i] for i in range(len(store)))])

    full, short = _build(docs, short_seq_prob=0.0), _build(docs, short_seq_prob=1.0)
    assert mean_length(full) > 26  # Close to the 29-token target.
    assert mean_length(short) < 0.8 * mean_length(full)


def test_deterministic_by_seed_and_dupe_factor_adds_passes():
    docs = _numbered_documents(30, np.random.default_rng(3))
    one, same, other = _build(docs), _build(docs), _build(docs, seed=1)
    np.testing.assert_array_equal(one.spans, same.spans)
    np.testing.assert_array_equal(one.is_random_next, same.is_random_next)
    assert one.spans.shape != other.spans.shape or np.any(one.spans != other.spans)
    assert 1.6 * len(one) < len(_build(docs, dupe_factor=2)) < 2.4 * len(one)


def test_save_and_load_round_trip(tmp_path):
    store = _build(_numbered_documents(10, np.random.default_rng(4)))
    store.save(str(tmp_path / "s.npz"))
    loaded = instances.InstanceStore.load(str(tmp_path / "s.npz"))
    assert len(loaded) == len(store) and loaded.max_seq_length == 32
    for i in range(len(store)):
        for x, y in zip(store[i], loaded[i]):
            np.testing.assert_array_equal(x, y)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="is not an instance store"):
        instances.InstanceStore.load(str(tmp_path / "bad.npz"))


def test_needs_two_documents_with_tokens():
    with pytest.raises(ValueError, match="NSP needs at least 2 documents"):
        _build([[[]], [], [np.arange(5), []]])
    # Empty sentences and documents are skipped, not fatal.
    store = _build([[[]], [np.arange(5)], [], [[], np.arange(10, 13)]])
    assert set(np.unique(store.tokens)) == {0, 1, 2, 3, 4, 10, 11, 12}


def test_tokenize_documents_encodes_every_sentence(pipeline_tokenizer):
    docs = [["Hello there.", "", "Again here."], ["   "], ["Third doc."]]
    ids = instances.tokenize_documents(docs, pipeline_tokenizer)
    assert len(ids) == 2  # The document of blanks has no tokens.
    expected = [pipeline_tokenizer.encode(s) for s in ("Hello there.", "Again here.", "Third doc.")]
    assert [s.tolist() for d in ids for s in d] == expected
    assert all(s.dtype == np.int32 for d in ids for s in d)
    # Encoding in small batches changes nothing.
    small = instances.tokenize_documents(iter(docs), pipeline_tokenizer, batch_sentences=2)
    assert [[s.tolist() for s in d] for d in small] == [[s.tolist() for s in d] for d in ids]
