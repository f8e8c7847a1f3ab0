"""Documents: BERT text format parsing, globs, bad input, sentence splitting and TFDS sources."""

import pytest
import tensorflow_datasets as tfds

from data_pipeline import documents


def test_reads_bert_text_format(tmp_path):
    (tmp_path / "a.txt").write_bytes(
        b"  First sentence.  \r\nSecond one.\n\n\n \nOther doc.\n\nLast doc, no newline."
    )
    assert documents.read_documents(str(tmp_path / "a.txt")) == [
        ["First sentence.", "Second one."],
        ["Other doc."],
        ["Last doc, no newline."],
    ]


def test_files_are_sorted_deduplicated_and_end_documents(tmp_path):
    (tmp_path / "b.txt").write_text("b1\nb2\n")
    (tmp_path / "a.txt").write_text("a1\n\na2\n")
    (tmp_path / "c.text").write_text("c1\n")
    spec = f"{tmp_path}/b.txt, {tmp_path}/*.txt,{tmp_path}/c.text"
    assert documents.resolve_files(spec) == [
        str(tmp_path / name) for name in ("a.txt", "b.txt", "c.text")
    ]
    assert documents.read_documents(spec) == [["a1"], ["a2"], ["b1", "b2"], ["c1"]]


def test_skips_lines_that_are_not_utf8_and_counts_them(tmp_path, caplog):
    (tmp_path / "a.txt").write_bytes(b"good \xc3\xa9\nbad \xff\xfe\nalso bad \xc3\n\nfine\n")
    assert documents.read_documents(str(tmp_path / "a.txt")) == [["good \u00e9"], ["fine"]]
    assert "Skipped 2 line(s) that are not valid UTF-8 in 1 file(s)" in caplog.text


def test_glob_matching_nothing_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(FileNotFoundError, match=r"no file matches '.*/typo\*\.txt'"):
        documents.read_documents(f"{tmp_path}/a.txt,{tmp_path}/typo*.txt")
    with pytest.raises(ValueError, match="no input files"):
        documents.read_documents(" , ")


def test_all_empty_files_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("\n  \n\n")
    with pytest.raises(ValueError, match="holds no text"):
        documents.read_documents(f"{tmp_path}/*.txt")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("One. Two! Three? four.", ["One.", "Two!", "Three? four."]),
        ("Line one\nLine two. Next", ["Line one", "Line two.", "Next"]),
        ('He said "Go." Then left.', ['He said "Go."', "Then left."]),
        ("Dr. Smith met J. Doe, e.g. Today. Yes", ["Dr. Smith met J. Doe, e.g. Today.", "Yes"]),
        ("Pi is 3.14 exactly. 42 is next.", ["Pi is 3.14 exactly.", "42 is next."]),
        ("\n  \n", []),
    ],
)
def test_split_sentences(text, expected):
    assert documents.split_sentences(text) == expected


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("tfds:lm1b", ("lm1b", "train")),
        ("tfds:imdb_reviews:test", ("imdb_reviews", "test")),
        (
            "tfds:wikipedia/20230601.en:1.0.0:train[:10%]",
            ("wikipedia/20230601.en:1.0.0", "train[:10%]"),
        ),
    ],
)
def test_parse_tfds_spec(spec, expected):
    assert documents.is_tfds_spec(spec)
    assert documents.parse_tfds_spec(spec) == expected


def test_tfds_source_reads_each_record_as_a_document():
    records = [
        {"text": b"First sentence. Second one!\nNew line", "label": 0},
        {"text": "   ", "label": 1},  # Empty: skipped.
        {"text": "Only one.", "label": 0},
    ]
    requested = []

    def as_data_source(builder, split, **kwargs):
        requested.append((builder.name, split))
        return records

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        docs = documents.read_documents("tfds:imdb_reviews:test")
        with pytest.raises(ValueError, match="has no feature 'body'"):
            documents.read_documents("tfds:imdb_reviews:test", text_feature="body")
    assert requested[0] == ("imdb_reviews", "test")
    assert docs == [["First sentence.", "Second one!", "New line"], ["Only one."]]


def test_tfds_source_through_the_real_data_source_code_path():
    # mock_data's default keeps tfds.data_source's own ArrayRecord reader, feeding it random text.
    with tfds.testing.mock_data(num_examples=7):
        docs = documents.read_documents("tfds:lm1b")
        assert docs == documents.read_documents("tfds:lm1b:train")  # Deterministic, same split.
    assert len(docs) == 7
    assert all(isinstance(s, str) and s for d in docs for s in d)


def test_an_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(
        ValueError, match=r"'glue/sst2' split 'train' is not prepared.*tfds build glue/sst2"
    ):
        list(documents.iter_documents("tfds:glue/sst2"))
    with pytest.raises(ValueError, match="TFDS has no dataset 'no_such_dataset'"):
        list(documents.iter_documents("tfds:no_such_dataset"))
    assert not any(tmp_path.iterdir())  # Nothing downloaded or built.
