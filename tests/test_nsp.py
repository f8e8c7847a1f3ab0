"""NSP instances of a unit: BERT's recipe properties, truncation, determinism."""

import numpy as np

from data_pipeline import nsp

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


def _build(docs, seed=0, **overrides):
    args = dict(max_seq_length=32, short_seq_prob=0.1, random_next_prob=0.5, dupe_factor=1)
    rng = np.random.default_rng(seed)
    return nsp.unit_instances(docs, rng=rng, **{**args, **overrides})


def _random_next(instances) -> np.ndarray:
    return np.array([r for _, _, r in instances])


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
                assert nsp.truncation_counts(len_a, len_b, max_num_tokens) == _naive_truncation(
                    len_a, len_b, max_num_tokens
                )


def test_segments_are_contiguous_and_come_from_the_right_documents():
    rng = np.random.default_rng(0)
    store = _build(_numbered_documents(40, rng), dupe_factor=3)
    assert len(store) > 100
    for a, b, is_random_next in store:
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
    assert abs(_random_next(store).mean() - 0.5) < 0.05
    # Put-back sentences make random-next instances a little more frequent than the coin (BERT
    # behaves the same), so the low setting gets a one-sided allowance.
    low = _build(docs, short_seq_prob=0.0, dupe_factor=2, random_next_prob=0.1)
    assert 0.08 < _random_next(low).mean() < 0.14
    never = _build(docs, short_seq_prob=0.0, dupe_factor=2, random_next_prob=0.0)
    assert _random_next(never).mean() < 0.02  # Only the forced single-sentence chunks.


def test_single_sentence_chunks_always_take_a_random_next():
    docs = [[np.arange(d * 10, d * 10 + 5)] for d in range(5)]  # One sentence each.
    store = _build(docs, random_next_prob=0.0)
    assert len(store) == 5
    assert _random_next(store).all()


def test_short_seq_prob_shortens_instances():
    docs = _numbered_documents(40, np.random.default_rng(2), sentences=(20, 30), tokens=(2, 6))

    def mean_length(store):
        return np.mean([len(a) + len(b) for a, b, _ in store])

    full, short = _build(docs, short_seq_prob=0.0), _build(docs, short_seq_prob=1.0)
    assert mean_length(full) > 26  # Close to the 29-token target.
    assert mean_length(short) < 0.8 * mean_length(full)


def test_deterministic_by_seed_and_dupe_factor_adds_passes():
    docs = _numbered_documents(30, np.random.default_rng(3))
    one, same, other = _build(docs), _build(docs), _build(docs, seed=1)
    flat = lambda xs: [(a.tolist(), b.tolist(), r) for a, b, r in xs]
    assert flat(one) == flat(same) and flat(one) != flat(other)
    assert 1.6 * len(one) < len(_build(docs, dupe_factor=2)) < 2.4 * len(one)


def test_a_unit_of_one_document_draws_random_segments_from_itself():
    """BERT, finding no other document, takes B from the same one; empty ones are skipped."""
    store = _build([[[]], [], _numbered_documents(1, np.random.default_rng(5), (30, 40))[0]])
    assert store and all(a[0] // DOC_STRIDE == b[0] // DOC_STRIDE == 0 for a, b, _ in store)
    assert _random_next(store).any()
    assert _build([[[]], []]) == []


def test_tokenize_documents_encodes_every_sentence(pipeline_tokenizer):
    docs = [["Hello there.", "", "Again here."], ["   "], ["Third doc."]]
    ids = nsp.tokenize_documents(docs, pipeline_tokenizer)
    assert len(ids) == 2  # The document of blanks has no tokens.
    expected = [pipeline_tokenizer.encode(s) for s in ("Hello there.", "Again here.", "Third doc.")]
    assert [s.tolist() for d in ids for s in d] == expected
    assert all(s.dtype == np.int32 for d in ids for s in d)
    # Encoding in small batches changes nothing.
    small = nsp.tokenize_documents(iter(docs), pipeline_tokenizer, batch_sentences=2)
    assert [[s.tolist() for s in d] for d in small] == [[s.tolist() for s in d] for d in ids]
