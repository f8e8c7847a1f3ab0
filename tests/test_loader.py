"""Loaders over built shards: batches as pure functions of (seed, step, rows), epochs that
are permutations, eval padding, reads limited to the rows asked for, packed rows."""

import numpy as np
import pytest

from configs import default
from data_pipeline import loader, masking, order, records, shards

S, P = 32, 5


@pytest.fixture(scope="module")
def vocab(pipeline_tokenizer):
    return masking.MaskingVocab.from_tokenizer(pipeline_tokenizer)


def _build(corpus, tokenizer, directory, **recipe) -> records.BuiltData:
    recipe = shards.Recipe(max_seq_length=S, **recipe)
    # Small units: several shards, so global indices cross shard boundaries.
    shards.build_locally(str(corpus), str(directory), tokenizer.model_path, recipe, 4000)
    return records.BuiltData(directory)


@pytest.fixture(scope="module")
def built(pipeline_corpus, pipeline_tokenizer, tmp_path_factory):
    return _build(pipeline_corpus[0], pipeline_tokenizer, tmp_path_factory.mktemp("nsp"))


@pytest.fixture(scope="module")
def packed(pipeline_corpus, pipeline_tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("packed")
    return _build(pipeline_corpus[0], pipeline_tokenizer, directory, objective="packed")


def _train(data, vocab, seed=0, batch_size=8, **kwargs):
    args = dict(
        max_seq_length=S, max_predictions_per_seq=P, masked_lm_prob=0.15, whole_word_masking=False
    )
    return loader.PretrainingLoader(
        data, vocab, seed=seed, global_batch_size=batch_size, **{**args, **kwargs}
    )


def _assert_batches_equal(x, y):
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_matches_the_contract(built, vocab):
    assert len(built.manifest["units"]) > 2
    b = _train(built, vocab).batch(3)
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
    assert np.all(b["input_ids"][:, 0] == vocab.cls_id)
    assert np.all(b["input_ids"][b["input_mask"] == 0] == 0)
    assert np.all(b["next_sentence_weights"] == 1.0)


@pytest.mark.parametrize("whole_word_masking", [False, True])
def test_process_slices_join_to_the_global_batch(built, vocab, whole_word_masking):
    train = _train(built, vocab, whole_word_masking=whole_word_masking)
    for step in (0, 5, 17):
        full = train.batch(step)
        for count in (2, 4):
            blocks = np.array_split(np.arange(8), count)  # One block of rows per process.
            slices = [train.batch(step, rows) for rows in blocks]
            _assert_batches_equal(full, {k: np.concatenate([s[k] for s in slices]) for k in full})


def test_a_process_reads_only_the_records_of_its_rows(built, vocab):
    data = records.BuiltData(built.directory)  # A fresh reader: its own count.
    train = _train(data, vocab)
    train.batch(7, rows=np.array([2, 5]))
    assert data.records_read == 2
    train.batch(8)
    assert data.records_read == 2 + 8


def test_deterministic_across_loaders_and_steps_differ(built, vocab):
    a, b = _train(built, vocab), _train(built, vocab)
    _assert_batches_equal(a.batch(4), b.batch(4))
    a.batch(400)  # Another epoch read by `a` changes nothing.
    _assert_batches_equal(a.batch(4), b.batch(4))
    assert not np.array_equal(a.batch(4)["input_ids"], a.batch(5)["input_ids"])
    assert not np.array_equal(
        a.batch(4)["input_ids"], _train(built, vocab, seed=1).batch(4)["input_ids"]
    )


def test_each_epoch_visits_every_example_once_in_a_new_order():
    n = 101  # Not a multiple of 8: the epoch boundary falls inside a batch.
    epochs_order = order.EpochOrder(n, seed=0, global_batch_size=8)
    steps = range(3 * n // 8 + 1)
    examples, epochs = zip(*(epochs_order.examples(s, np.arange(8)) for s in steps))
    examples, epochs = np.concatenate(examples), np.concatenate(epochs)
    for epoch in range(3):
        assert sorted(examples[epochs == epoch].tolist()) == list(range(n))
    assert not np.array_equal(examples[:n], examples[n : 2 * n])  # Reshuffled per epoch.
    other_seed = order.EpochOrder(n, seed=1, global_batch_size=8).examples(0, np.arange(8))[0]
    assert not np.array_equal(examples[:8], other_seed)
    # Never materialized: a billion examples cost the same as a hundred.
    huge = order.EpochOrder(10**9, seed=0, global_batch_size=8).examples(10**7, np.arange(8))[0]
    assert len(set(huge.tolist())) == 8 and huge.max() < 10**9


def test_masks_change_between_epochs(built, vocab):
    n = len(built)
    train = _train(built, vocab, batch_size=n)  # One epoch per step.
    ex0, _ = train.order.examples(0, np.arange(n))
    ex1, _ = train.order.examples(1, np.arange(n))
    b0, b1 = train.batch(0), train.batch(1)
    row0, row1 = np.argsort(ex0), np.argsort(ex1)  # Row of each example per epoch.
    np.testing.assert_array_equal(b0["input_mask"][row0], b1["input_mask"][row1])
    assert not np.array_equal(b0["masked_lm_positions"][row0], b1["masked_lm_positions"][row1])


def _eval(data, vocab, batch_size):
    return loader.EvalLoader(
        data,
        vocab,
        batch_size=batch_size,
        max_seq_length=S,
        max_predictions_per_seq=P,
        masked_lm_prob=0.15,
        whole_word_masking=False,
    )


def test_eval_pads_the_last_batch_with_zero_weight_rows(built, vocab):
    n = len(built)
    ev = _eval(built, vocab, batch_size=16)
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
    _assert_batches_equal(first, _eval(built, vocab, batch_size=16).batch(0))
    half = ev.batch(0, rows=np.arange(8, 16))
    _assert_batches_equal({k: v[8:] for k, v in first.items()}, half)
    a, b, is_random_next = records.decode_nsp(built.read([2])[0])
    assert first["input_mask"][2].sum() == len(a) + len(b) + 3
    assert first["next_sentence_labels"][2] == is_random_next
    with pytest.raises(ValueError, match="out of range"):
        ev.batch(ev.num_batches)


def test_packed_rows_are_full_with_documents_and_positions(packed, vocab, pipeline_tokenizer):
    b = _train(packed, vocab, batch_size=16, masked_lm_prob=0.3).batch(0)
    assert "next_sentence_labels" not in b and not b["segment_ids"].any()
    full = b["input_mask"].sum(1) == S
    assert full.mean() > 0.8  # Only each shard's last row is short.
    for r in range(16):
        ids, doc, pos = b["input_ids"][r], b["document_ids"][r], b["positions"][r]
        n = int(b["input_mask"][r].sum())
        assert np.all(doc[:n] >= 1) and not doc[n:].any()
        # Positions count from 0 within each piece of a document.
        starts = np.flatnonzero(np.diff(np.concatenate([[0], doc[:n]])))
        assert np.all(pos[starts] == 0) and np.all(np.diff(pos[:n])[np.diff(doc[:n]) == 0] == 1)
        # A piece that starts a document starts with [CLS]; every document ends with [SEP].
        unmasked = ids.copy()
        k = b["masked_lm_weights"][r] > 0
        unmasked[b["masked_lm_positions"][r][k]] = b["masked_lm_ids"][r][k]
        assert all(unmasked[s] == vocab.cls_id for s in starts[1:])
    # 30% of the tokens are masked (up to the cap).
    assert b["masked_lm_weights"].sum(1).mean() == pytest.approx(min(P, round(0.3 * S)), abs=0.5)


def test_bad_arguments_are_clear_errors(built, vocab):
    with pytest.raises(ValueError, match="max_predictions_per_seq=30 must be in"):
        _train(built, vocab, max_predictions_per_seq=30)
    with pytest.raises(ValueError, match="max_seq_length=6 is too short"):
        _train(built, vocab, max_seq_length=6)
    with pytest.raises(ValueError, match="masked_lm_prob=1.5"):
        _train(built, vocab, masked_lm_prob=1.5)
    with pytest.raises(ValueError, match="batch size 0 must be positive"):
        _train(built, vocab, batch_size=0)
    with pytest.raises(ValueError, match="built for max_seq_length=32"):
        _train(built, vocab, max_seq_length=16)
    with pytest.raises(ValueError, match="rows must be"):
        _train(built, vocab).batch(0, rows=[8])
    with pytest.raises(ValueError, match="step=-1"):
        _train(built, vocab).batch(-1)


def _data_config(train_files, eval_files=""):
    c = default.get_config().data
    c.train_files, c.eval_files = train_files, eval_files
    c.max_seq_length, c.max_predictions_per_seq = 32, 5
    return c


def test_build_datasets_builds_text_once_into_the_cache(
    pipeline_corpus, pipeline_tokenizer, tmp_path
):
    corpus = str(pipeline_corpus[0])
    config = _data_config(corpus, eval_files=corpus)
    args = dict(global_batch_size=8, eval_batch_size=4, cache_dir=str(tmp_path))
    train, ev = loader.build_datasets(config, pipeline_tokenizer, 0, **args)
    built = sorted(tmp_path.glob("built-*"))
    assert len(built) == 2  # Train and eval (their own seed): two builds.
    a, _, _ = records.decode_nsp(train.data.read([0])[0])
    text = " ".join(s for d in pipeline_corpus[1] for s in d).lower()
    assert pipeline_tokenizer.decode(a) in text
    assert ev.seed == loader.EVAL_SEED and ev.masked_lm_prob == loader.EVAL_MASKED_LM_PROB

    # A restart finds both builds complete: nothing is written again.
    stamps = {p: p.stat().st_mtime_ns for b in built for p in b.iterdir()}
    train2, ev2 = loader.build_datasets(config, pipeline_tokenizer, 0, **args)
    assert {p: p.stat().st_mtime_ns for b in built for p in b.iterdir()} == stamps
    _assert_batches_equal(train.batch(3), train2.batch(3))
    _assert_batches_equal(ev.batch(0), ev2.batch(0))

    # Another seed is another build; no eval files, no eval loader. A built directory is read.
    _, none = loader.build_datasets(_data_config(corpus), pipeline_tokenizer, 1, **args)
    assert none is None and len(list(tmp_path.glob("built-*"))) == 3
    direct, _ = loader.build_datasets(_data_config(str(built[0])), pipeline_tokenizer, 7, **args)
    assert len(list(tmp_path.glob("built-*"))) == 3 and direct.data.directory == built[0]


def test_build_datasets_validates_the_config(pipeline_corpus, pipeline_tokenizer, tmp_path):
    corpus = str(pipeline_corpus[0])
    cases = [
        (dict(train_files=""), "data.train_files is empty"),
        (dict(max_predictions_per_seq=40), "max_predictions_per_seq=40 must be in"),
        (dict(random_next_prob=-0.1), "data.random_next_prob=-0.1 must be a probability"),
        (dict(short_seq_prob=2.0), "data.short_seq_prob=2.0 must be a probability"),
        (dict(dupe_factor=0), "dupe_factor=0 must be at least 1"),
    ]
    for overrides, message in cases:
        config = _data_config(corpus)
        config.update(overrides)
        with pytest.raises(ValueError, match=message):
            loader.build_datasets(
                config, pipeline_tokenizer, 0, global_batch_size=8, eval_batch_size=4,
                cache_dir=str(tmp_path),
            )  # fmt: skip
