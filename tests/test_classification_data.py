"""Labelled data for fine-tuning: TSV parsing and its errors, labels, truncation, batches, TFDS."""

import ml_collections
import numpy as np
import pytest

from data_pipeline.tasks import classification, examples


def _data_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(
        dict(
            train_file="",
            eval_file="",
            max_seq_length=16,
            text_a_key="sentence",
            text_b_key="",
            label_key="label",
            labels="",
            has_header=None,
        )
    )
    c.update(overrides)
    return c


def _write(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_reads_single_and_pair_rows(tmp_path):
    single = examples.read_tsv(_write(tmp_path / "s.tsv", ["pos\tgood film", "", "neg\tbad"]))
    assert single.label == ["pos", "neg"] and single.text_a == ["good film", "bad"]
    assert single.text_b is None and single.line == [1, 3]  # Blank lines skipped, lines kept.
    pair = examples.read_tsv(_write(tmp_path / "p.tsv", ["1\ta cat\tthe cat", "0\tx\ty"]))
    assert pair.text_a == ["a cat", "x"] and pair.text_b == ["the cat", "y"]


@pytest.mark.parametrize(
    "lines, line_no, fragment",
    [
        (["pos\tok", "just one column"], 2, "1 tab-separated columns"),
        (["pos\tok", "pos\ta\tb\tc"], 2, "4 tab-separated columns"),
        (["pos\ta\tb", "neg\tc\td", "pos\tonly a"], 3, "earlier lines have 3"),
        (["pos\tok", "\tno label"], 2, "empty label"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, lines, line_no, fragment):
    path = _write(tmp_path / "bad.tsv", lines)
    with pytest.raises(ValueError) as e:
        examples.read_tsv(path)
    assert f"{path}, line {line_no}" in str(e.value) and fragment in str(e.value)


def test_label_set_comes_from_training_data_sorted(tmp_path):
    words = examples.read_tsv(_write(tmp_path / "w.tsv", ["pos\ta", "neg\tb", "pos\tc"]))
    assert classification.label_vocabulary(words, "classification") == ["neg", "pos"]
    numbers = examples.read_tsv(_write(tmp_path / "n.tsv", ["10\ta", "2\tb", "1\tc"]))
    assert classification.label_vocabulary(numbers, "classification") == ["1", "2", "10"]
    assert classification.label_vocabulary(numbers, "regression") == []


def test_eval_label_unseen_in_training_names_the_line(tmp_path, pipeline_tokenizer):
    config = _data_config(
        train_file=_write(tmp_path / "train.tsv", ["pos\ta b", "neg\tc d"]),
        eval_file=_write(tmp_path / "eval.tsv", ["pos\ta", "neutral\tb"]),
    )
    with pytest.raises(ValueError, match=r"eval\.tsv, line 2: label 'neutral' does not occur"):
        classification.build_datasets(
            config,
            pipeline_tokenizer,
            task="classification",
            seed=0,
            global_batch_size=2,
            eval_batch_size=2,
        )


def test_regression_needs_numeric_labels(tmp_path):
    rows = examples.read_tsv(_write(tmp_path / "r.tsv", ["0.5\ta", "high\tb"]))
    with pytest.raises(ValueError, match=r"r\.tsv, line 2: label 'high' is not a number"):
        classification.encode_labels(rows, [], "regression", "r.tsv")


def _bert_truncate(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """google-research/bert `_truncate_seq_pair`: pop from the longer (b on ties), one at a time."""
    while len_a + len_b > max_tokens:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_pair_truncation_matches_berts_token_by_token_rule():
    grid = [(a, b, m) for a in range(0, 14) for b in range(0, 14) for m in range(0, 12)]
    got_a, got_b = classification.truncated_pair_lengths(*np.array(grid).T)
    expected = [_bert_truncate(a, b, m) for a, b, m in grid]
    assert list(zip(got_a.tolist(), got_b.tolist())) == expected


class _FakeTokenizer:
    """One id per character ('a' -> 10, ...), so lengths are easy to reason about."""

    cls_id, sep_id = 2, 3

    def encode_batch(self, texts):
        return [[10 + ord(c) - ord("a") for c in text if c.isalpha()] for text in texts]


def test_features_pack_pairs_and_pad_eval_with_weight_zero(tmp_path):
    config = _data_config(
        max_seq_length=8,
        train_file=_write(tmp_path / "t.tsv", ["yes\tab\tc", "no\tabcdef\tghijkl", "yes\ta\tb"]),
        eval_file=_write(tmp_path / "e.tsv", ["no\tab\tc", "yes\tb\tc", "no\tc\td"]),
    )
    data = classification.build_datasets(
        config, _FakeTokenizer(), task="classification", seed=0, global_batch_size=3,
        eval_batch_size=2,
    )  # fmt: skip
    assert data.labels == ["no", "yes"]
    assert data.eval.num_batches == 2
    first = data.eval.batch(0)
    # [CLS] a b [SEP] c [SEP], then padding.
    np.testing.assert_array_equal(first["input_ids"][0], [2, 10, 11, 3, 12, 3, 0, 0])
    np.testing.assert_array_equal(first["input_mask"][0], [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(first["segment_ids"][0], [0, 0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(first["label"], [0, 1])
    last = data.eval.batch(1)
    np.testing.assert_array_equal(last["example_weight"], [1.0, 0.0])  # Padded row.
    assert not last["input_mask"][1].any()
    # The long pair (6 + 6 tokens) keeps 3 + 2 = 8 - 3: [CLS] abc [SEP] gh [SEP].
    train_rows = {
        tuple(r) for r in np.concatenate([data.train.batch(s)["input_ids"] for s in range(3)])
    }
    assert (2, 10, 11, 12, 3, 16, 17, 3) in train_rows


def test_train_batches_are_a_pure_function_of_seed_and_step(tmp_path):
    lines = [f"{'yes' if i % 2 else 'no'}\t{chr(ord('a') + i)}" for i in range(10)]
    config = _data_config(train_file=_write(tmp_path / "t.tsv", lines))
    make = lambda seed: classification.build_datasets(
        config, _FakeTokenizer(), task="classification", seed=seed, global_batch_size=4,
        eval_batch_size=4,
    ).train  # fmt: skip
    a, b = make(0), make(0)
    np.testing.assert_array_equal(a.batch(7)["input_ids"], b.batch(7)["input_ids"])
    # Rows 1 and 3 of a batch are those rows of the full batch (each process builds its rows).
    np.testing.assert_array_equal(a.batch(3, rows=[1, 3])["label"], a.batch(3)["label"][[1, 3]])
    # Steps 0-4 hold 20 rows = 2 epochs of 10 examples: each example exactly twice.
    tokens = np.concatenate([a.batch(s)["input_ids"][:, 1] for s in range(5)])  # After [CLS].
    np.testing.assert_array_equal(np.bincount(tokens - 10), [2] * 10)
    rows = np.arange(4)
    assert not np.array_equal(make(1).order.examples(0, rows)[0], a.order.examples(0, rows)[0])


def test_tfds_source_with_configurable_features(pipeline_tokenizer):
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets.text.glue  # noqa: F401 - registers glue for the mock

    config = _data_config(
        train_file="tfds:glue/mrpc",
        eval_file="tfds:glue/mrpc:validation",
        text_a_key="sentence1",
        text_b_key="sentence2",
    )
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        data = classification.build_datasets(
            config, pipeline_tokenizer, task="classification", seed=0, global_batch_size=2,
            eval_batch_size=4,
        )  # fmt: skip
        with pytest.raises(ValueError, match="no feature 'question' \\(it has \\['idx', 'label'"):
            examples.read_tfds("tfds:glue/mrpc", "question", "", "label")
    assert data.labels == ["not_equivalent", "equivalent"]  # The ClassLabel names, in id order.
    assert data.eval.num_examples == 6 and data.eval_examples.text_b is not None
    batch = data.eval.batch(1)
    np.testing.assert_array_equal(batch["example_weight"], [1, 1, 0, 0])
    assert batch["segment_ids"][0].max() == 1  # A real pair.


def _rows(labels_and_texts):
    return [f"{label}\t{text}" for label, text in labels_and_texts]


def test_a_header_row_is_skipped_with_a_warning_or_as_configured(tmp_path, caplog):
    body = [("pos" if i % 2 else "neg", f"sentence number {i}") for i in range(12)]
    path = _write(tmp_path / "h.tsv", _rows([("label", "sentence"), *body]))
    config = _data_config(train_file=path)
    with caplog.at_level("WARNING"):
        data = classification.build_datasets(
            config, _FakeTokenizer(), task="classification", seed=0, global_batch_size=4,
            eval_batch_size=4,
        )  # fmt: skip
    assert data.labels == ["neg", "pos"] and data.train.num_examples == 12
    assert "skipped line 1 (label 'label') as a header row" in caplog.text
    config.has_header = False  # Told it is an example: kept (a class named 'label').
    data = classification.build_datasets(
        config, _FakeTokenizer(), task="classification", seed=0, global_batch_size=4,
        eval_batch_size=4,
    )  # fmt: skip
    assert data.labels == ["label", "neg", "pos"]


def test_swapped_columns_stop_with_one_line(tmp_path):
    rows = _rows([(f"this is sentence number {i} of the file", "pos") for i in range(30)])
    config = _data_config(train_file=_write(tmp_path / "s.tsv", rows))
    with pytest.raises(ValueError, match="columns look swapped"):
        classification.build_datasets(
            config, _FakeTokenizer(), task="classification", seed=0, global_batch_size=4,
            eval_batch_size=4,
        )  # fmt: skip
