"""Loaders: batches as pure functions of (seed, step, rows), epochs, eval padding, datasets."""

import numpy as np
import pytest

from configs import default
from data_pipeline import instances, loader, masking, order

V, S, P = 300, 32, 5
VOCAB = masking.MaskingVocab(
    vocab_size=V,
    cls_id=2,
    sep_id=3,
    mask_id=4,
    special_ids=frozenset(range(5)),
    is_word_start=np.arange(V) % 3 != 0,
)


@pytest.fixture(scope="module")
def store():
    rng = np.random.default_rng(0)
    docs = [
        [rng.integers(5, V, rng.integers(2, 9)) for _ in range(rng.integers(1, 10))]
        for _ in range(30)
    ]
    return instances.build_instance_store(
        docs, seed=0, max_seq_length=S, short_seq_prob=0.1, random_next_prob=0.5, dupe_factor=1
    )


def _train(store, seed=0, batch_size=8, **kwargs):
    args = dict(
        max_seq_length=S, max_predictions_per_seq=P, masked_lm_prob=0.15, whole_word_masking=False
    )
    return loader.PretrainingLoader(
        store, VOCAB, seed=seed, global_batch_size=batch_size, **{**args, **kwargs}
    )


def _assert_batches_equal(x, y):
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_matches_the_contract(store):
    b = _train(store).batch(3)
    assert {k: (v.shape, v.dtype.name) for k, v in b.items()} == {
        "input_ids": ((8, S), "int32"),
        "input_mask": ((8, S), "int32"),
        "segment_ids": ((8, S), "int32"),
        "masked_lm_positions": ((8, P), "int32"),
        "masked_lm_ids": ((8, P), "int32"),
        "masked_lm_weights": ((8, P), "float32"),
        "next_sentence_labels": ((8,), "int32"),
        "next_sentence_weights": ((8,), "float32"),
    }
    assert np.all(b["input_ids"][:, 0] == VOCAB.cls_id)
    assert np.all(b["input_ids"][b["input_mask"] == 0] == 0)
    assert np.all(b["next_sentence_weights"] == 1.0)


@pytest.mark.parametrize("whole_word_masking", [False, True])
def test_process_slices_join_to_the_global_batch(store, whole_word_masking):
    train = _train(store, whole_word_masking=whole_word_masking)
    for step in (0, 5, 17):
        full = train.batch(step)
        for count in (2, 4):
            blocks = np.array_split(np.arange(8), count)  # One block of rows per process.
            slices = [train.batch(step, rows) for rows in blocks]
            _assert_batches_equal(full, {k: np.concatenate([s[k] for s in slices]) for k in full})


def test_deterministic_across_loaders_and_steps_differ(store):
    a, b = _train(store), _train(store)
    _assert_batches_equal(a.batch(4), b.batch(4))
    a.batch(40)  # Another epoch cached in `a` changes nothing.
    _assert_batches_equal(a.batch(4), b.batch(4))
    assert not np.array_equal(a.batch(4)["input_ids"], a.batch(5)["input_ids"])
    assert not np.array_equal(a.batch(4)["input_ids"], _train(store, seed=1).batch(4)["input_ids"])


def test_each_epoch_visits_every_example_once(store):
    n = len(store)
    assert n % 8  # The epoch boundary falls inside a batch.
    train = _train(store)
    steps = range(3 * n // 8 + 1)
    examples, epochs = zip(*(train.order.examples(s, np.arange(8)) for s in steps))
    examples, epochs = np.concatenate(examples), np.concatenate(epochs)
    for epoch in range(3):
        assert sorted(examples[epochs == epoch].tolist()) == list(range(n))
    assert not np.array_equal(examples[:n], examples[n : 2 * n])  # Reshuffled per epoch.
    # Global position g is example permutation(seed, epoch)[g % n].
    for epoch in range(2):
        expected = np.random.default_rng([0, order.PERMUTATION, epoch]).permutation(n)
        np.testing.assert_array_equal(examples[epoch * n : (epoch + 1) * n], expected)


def test_masks_change_between_epochs(store):
    train = _train(store, batch_size=len(store))  # One epoch per step.
    order0, order1 = train.order.permutation(0), train.order.permutation(1)
    b0, b1 = train.batch(0), train.batch(1)
    row0, row1 = np.argsort(order0), np.argsort(order1)  # Row of each example per epoch.
    np.testing.assert_array_equal(b0["input_mask"][row0], b1["input_mask"][row1])
    assert not np.array_equal(b0["masked_lm_positions"][row0], b1["masked_lm_positions"][row1])


def _eval(store, batch_size):
    return loader.EvalLoader(
        store,
        VOCAB,
        batch_size=batch_size,
        max_seq_length=S,
        max_predictions_per_seq=P,
        masked_lm_prob=0.15,
        whole_word_masking=False,
    )


def test_eval_pads_the_last_batch_with_zero_weight_rows(store):
    n = len(store)
    ev = _eval(store, batch_size=16)
    assert ev.num_batches == -(-n // 16)
    real = n - 16 * (ev.num_batches - 1)
    assert 0 < real < 16
    last = ev.batch(ev.num_batches - 1)
    assert last["next_sentence_weights"].tolist() == [1.0] * real + [0.0] * (16 - real)
    assert np.all(last["masked_lm_weights"][:real].sum(1) >= 1)
    for k, v in last.items():
        assert not v[real:].any(), k  # Padding rows are all zeros.
    # In order, epoch-0 masks, same rows however sliced, same for another loader.
    first = ev.batch(0)
    _assert_batches_equal(first, _eval(store, batch_size=16).batch(0))
    half = ev.batch(0, rows=np.arange(8, 16))
    _assert_batches_equal({k: v[8:] for k, v in first.items()}, half)
    a, _, is_random_next = store[2]
    assert first["input_mask"][2].sum() == len(a) + len(store[2][1]) + 3
    assert first["next_sentence_labels"][2] == is_random_next
    with pytest.raises(ValueError, match="out of range"):
        ev.batch(ev.num_batches)


def test_bad_arguments_are_clear_errors(store):
    with pytest.raises(ValueError, match="max_predictions_per_seq=30 must be in"):
        _train(store, max_predictions_per_seq=30)
    with pytest.raises(ValueError, match="max_seq_length=6 is too short"):
        _train(store, max_seq_length=6)
    with pytest.raises(ValueError, match="masked_lm_prob=1.5"):
        _train(store, masked_lm_prob=1.5)
    with pytest.raises(ValueError, match="batch size 0 must be positive"):
        _train(store, batch_size=0)
    with pytest.raises(ValueError, match="built for max_seq_length=32"):
        _train(store, max_seq_length=16)
    with pytest.raises(ValueError, match="rows must be"):
        _train(store).batch(0, rows=[8])
    with pytest.raises(ValueError, match="step=-1"):
        _train(store).batch(-1)


def _data_config(train_files, eval_files=""):
    c = default.get_config().data
    c.train_files, c.eval_files = train_files, eval_files
    c.max_seq_length, c.max_predictions_per_seq = 32, 5
    return c


def test_build_datasets_reads_tokenizes_and_caches(
    pipeline_corpus, pipeline_tokenizer, tmp_path, monkeypatch
):
    corpus = str(pipeline_corpus[0])
    config = _data_config(corpus, eval_files=corpus)
    train, ev = loader.build_datasets(
        config,
        pipeline_tokenizer,
        0,
        global_batch_size=8,
        eval_batch_size=4,
        cache_dir=str(tmp_path),
    )
    assert len(list(tmp_path.glob("instances-*.npz"))) == 2  # Train and eval stores.
    # Segment A of an example decodes to text from the corpus.
    a, _, _ = train.store[0]
    assert (
        pipeline_tokenizer.decode(a) in " ".join(s for d in pipeline_corpus[1] for s in d).lower()
    )
    assert ev.num_examples == len(ev.store) and ev.seed == loader.EVAL_SEED

    # A restart loads both stores from the cache instead of rebuilding them.
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt despite the cache")

    with monkeypatch.context() as patch:
        patch.setattr(instances, "build_instance_store", fail)
        train2, ev2 = loader.build_datasets(
            config,
            pipeline_tokenizer,
            0,
            global_batch_size=8,
            eval_batch_size=4,
            cache_dir=str(tmp_path),
        )
    _assert_batches_equal(train.batch(3), train2.batch(3))
    _assert_batches_equal(ev.batch(0), ev2.batch(0))

    # Another seed is another cache entry; no eval files, no eval loader.
    _, none = loader.build_datasets(
        _data_config(corpus),
        pipeline_tokenizer,
        1,
        global_batch_size=8,
        eval_batch_size=4,
        cache_dir=str(tmp_path),
    )
    assert none is None
    assert len(list(tmp_path.glob("instances-*.npz"))) == 3
    assert not list(tmp_path.glob(".tmp-*"))


def test_build_datasets_validates_the_config(pipeline_corpus, pipeline_tokenizer):
    corpus = str(pipeline_corpus[0])
    cases = [
        (dict(train_files=""), "data.train_files is empty"),
        (dict(max_predictions_per_seq=40), "max_predictions_per_seq=40 must be in"),
        (dict(random_next_prob=-0.1), "data.random_next_prob=-0.1 must be a probability"),
        (dict(short_seq_prob=2.0), "data.short_seq_prob=2.0 must be a probability"),
        (dict(dupe_factor=0), "data.dupe_factor=0 must be at least 1"),
    ]
    for overrides, message in cases:
        config = _data_config(corpus)
        config.update(overrides)
        with pytest.raises(ValueError, match=message):
            loader.build_datasets(
                config, pipeline_tokenizer, 0, global_batch_size=8, eval_batch_size=4
            )
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        loader.build_datasets(
            _data_config(corpus), pipeline_tokenizer, 0, global_batch_size=0, eval_batch_size=4
        )
