"""WordPiece tokenizer: BERT's splitting by hand, parity with HF's BertTokenizer, the pipeline."""

import json

import ml_collections
import numpy as np
import pytest

from configs import default
from data_pipeline import loader, vocab
from data_pipeline.vocab import unigram as tok_lib
from data_pipeline.vocab import wordpiece
from pretrain.training import workdir as workdir_lib

# BERT's layout: [PAD]=0, [unused*] 1..99, [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103.
SPECIALS = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a of and to in is it was on cat dog sat mat hello world run un ##aff ##able ##ing "
    "##s ##ed ##ly cafe resume straße Hello World The Café 中 文 日 本 ' , . ! ? - ( ) : ; \" $"
).split()
LETTERS = "abcdefghijklmnopqrstuvwxyzé"
PIECES = list(dict.fromkeys([*SPECIALS, *WORDS, *LETTERS, *(f"##{c}" for c in LETTERS)]))
# Punctuation, unicode, accents, CJK, control and odd whitespace, unknown and over-long words.
SENTENCES = [
    "Hello, world! The cat sat on the mat.",
    "  unaffable   RUNNING runs\trun\nran  ",
    "Café résumé naïve — “quoted” (brackets) $5 e-mail: x@y.z",
    "中文 and 日本語 mixed日本text",
    "Straße, ΟΔΟΣ, İstanbul, Ångström, ﬁne",
    "zero\u200bwidth\u00a0nbsp\u3000ideographic\u2028line",
    "control\x01chars\x7f and \ufffd replacement",
    "emoji 😀 and snowman ☃ are unknown",
    "x" * 101 + " " + "y" * 100,
    "",
]


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("wordpiece") / wordpiece.VOCAB_FILE
    path.write_text("".join(p + "\n" for p in PIECES), encoding="utf-8")
    return str(path)


def pieces(tokenizer, text: str) -> list[str]:
    return [tokenizer.id_to_piece(i) for i in tokenizer.encode(text)]


def test_special_tokens_where_the_vocabulary_puts_them(vocab_path):
    t = wordpiece.WordPieceTokenizer(vocab_path)
    assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) == (0, 100, 101, 102, 103)
    assert t.special_ids == {0, 100, 101, 102, 103}
    assert t.vocab_size == len(PIECES)
    assert t.piece_to_id("##aff") == PIECES.index("##aff")
    assert t.piece_to_id("not-a-piece") == 100
    starts = t.is_word_start
    assert starts.dtype == np.bool_ and starts.shape == (len(PIECES),)
    assert starts[t.piece_to_id("run")] and not starts[t.piece_to_id("##ing")]
    assert not starts[[0, 100, 101, 102, 103]].any()


def test_uncased_splitting_by_hand(vocab_path):
    t = wordpiece.WordPieceTokenizer(vocab_path)  # No options file: uncased BERT.
    assert t.lower_case and t.strip_accents
    assert pieces(t, "Unaffable RUNNING!") == ["un", "##aff", "##able", "run", "##n", "##ing", "!"]
    # Accents stripped, then punctuation split off words.
    assert pieces(t, "Café,RÉSUMÉ") == ["cafe", ",", "resume"]
    assert pieces(t, "中文abc") == ["中", "文", "a", "##b", "##c"]
    # 'ß' has no accent to strip and no '##ß' piece: the whole word is unknown.
    assert pieces(t, "strasse großen") == ["s", "##t", "##r", "##a", "##s", "##s", "##e", "[UNK]"]
    assert pieces(t, "x" * 101) == ["[UNK]"]  # Over BERT's 100-character limit.
    assert pieces(t, "x" * 100) == ["x"] + ["##x"] * 99
    assert pieces(t, "a\x00b\ufffdc\u200bd \x7fe") == ["a", "##b", "##c", "##d", "e"]
    assert t.encode("  \t\n ") == []


def test_cased_keeps_case_and_accents(vocab_path):
    t = wordpiece.WordPieceTokenizer(vocab_path, lower_case=False)
    assert not t.strip_accents  # Follows lower_case unless given.
    assert pieces(t, "Hello World Café") == ["Hello", "World", "Café"]
    assert pieces(t, "hello") == ["hello"]
    accents_only = wordpiece.WordPieceTokenizer(vocab_path, lower_case=False, strip_accents=True)
    assert pieces(accents_only, "résumé Café") == ["resume", "[UNK]"]  # No "C" piece.


def test_literal_special_tokens_are_text(vocab_path):
    t = wordpiece.WordPieceTokenizer(vocab_path)
    assert not {0, 101, 102, 103} & set(t.encode("[CLS] the [MASK] sat [SEP] [PAD]"))


def test_decode_glues_continuations_and_drops_control_tokens(vocab_path):
    t = wordpiece.WordPieceTokenizer(vocab_path)
    ids = [t.cls_id, *t.encode("Unaffable cats, unknown☃"), t.sep_id, t.pad_id]
    assert t.decode(ids) == "unaffable cats , [UNK]"
    assert t.encode_batch(SENTENCES) == [t.encode(s) for s in SENTENCES]


@pytest.mark.parametrize("lower_case, strip_accents", [(True, None), (False, None), (True, False)])
def test_same_ids_as_hugging_face_bert_tokenizer(vocab_path, lower_case, strip_accents):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizer(
        vocab=vocab_path, do_lower_case=lower_case, strip_accents=strip_accents
    )
    ours = wordpiece.WordPieceTokenizer(
        vocab_path, lower_case=lower_case, strip_accents=strip_accents
    )
    assert hf.convert_tokens_to_ids("[UNK]") == 100  # The vocabulary really is BERT-shaped.
    for text in SENTENCES:
        assert ours.encode(text) == hf(text)["input_ids"][1:-1], text
    a, b = SENTENCES[0], SENTENCES[2]
    pair = hf(a, b)
    assert pair["input_ids"] == [101, *ours.encode(a), 102, *ours.encode(b), 102]
    assert pair["token_type_ids"] == [0] * (len(ours.encode(a)) + 2) + [1] * (
        len(ours.encode(b)) + 1
    )


def test_options_travel_with_the_vocabulary(vocab_path, tmp_path):
    cased = wordpiece.WordPieceTokenizer(vocab_path, lower_case=False)
    saved = cased.save(str(tmp_path / "cased"))
    options = json.loads((tmp_path / "cased" / wordpiece.CONFIG_FILE).read_text())
    assert options["do_lower_case"] is False and options["mask_token"] == "[MASK]"
    reloaded = wordpiece.WordPieceTokenizer(saved)
    assert not reloaded.lower_case
    assert reloaded.fingerprint == cased.fingerprint
    assert reloaded.encode(SENTENCES[2]) == cased.encode(SENTENCES[2])
    # Same pieces, other normalization: another fingerprint (instance caches must not mix).
    assert wordpiece.WordPieceTokenizer(vocab_path).fingerprint != cased.fingerprint


def test_bad_vocabularies_are_named(vocab_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        wordpiece.WordPieceTokenizer(str(tmp_path / "missing.txt"))
    no_mask = tmp_path / "vocab.txt"
    no_mask.write_text("".join(p + "\n" for p in PIECES if p != "[MASK]"))
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[MASK\]'\]"):
        wordpiece.WordPieceTokenizer(str(no_mask))


def test_load_tokenizer_dispatches_on_the_file(vocab_path, pipeline_tokenizer):
    assert isinstance(vocab.load(vocab_path), wordpiece.WordPieceTokenizer)
    loaded = vocab.load(pipeline_tokenizer.model_path)
    assert isinstance(loaded, tok_lib.SentencePieceTokenizer)
    assert loaded.fingerprint == pipeline_tokenizer.fingerprint


def test_workdir_copies_a_vocabulary_with_its_options(vocab_path, tmp_path):
    source = tmp_path / "source"
    wordpiece.WordPieceTokenizer(vocab_path, lower_case=False).save(str(source))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    data = ml_collections.ConfigDict({"tokenizer_model": str(source / "vocab.txt")})
    tokenizer = workdir_lib.prepare_tokenizer(data, workdir)
    assert isinstance(tokenizer, wordpiece.WordPieceTokenizer) and not tokenizer.lower_case
    assert workdir_lib.tokenizer_file(workdir) == workdir / "vocab.txt"
    assert (workdir / wordpiece.CONFIG_FILE).exists()
    # A restart reuses the workdir's copy, whatever data.tokenizer_model says now.
    (source / "vocab.txt").unlink()
    again = workdir_lib.prepare_tokenizer(data, workdir)
    assert again.fingerprint == tokenizer.fingerprint


def test_pretraining_batches_from_a_wordpiece_vocabulary(vocab_path, tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "unaffable", "running", "dog", "café", "hello"]
    docs = ["\n".join(" ".join(rng.choice(words, 7)) + "." for _ in range(4)) for _ in range(12)]
    (tmp_path / "train.txt").write_text("\n\n".join(docs) + "\n")
    config = default.get_config()
    config.data.train_files = str(tmp_path / "train.txt")
    config.data.max_seq_length = 32
    config.data.max_predictions_per_seq = 5
    tokenizer = wordpiece.WordPieceTokenizer(vocab_path)
    train, _ = loader.build_datasets(
        config.data, tokenizer, seed=0, global_batch_size=8, eval_batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    batch = train.batch(0)
    ids, mask = batch["input_ids"], batch["input_mask"]
    assert (ids[:, 0] == 101).all()  # [CLS] by its WordPiece id, not sentencepiece's 2.
    assert ((ids == 102) * mask).sum(axis=1).tolist() == [2] * 8  # Two [SEP]s per sequence.
    assert (ids == 103).any()  # Some [MASK]s.
    targets = batch["masked_lm_ids"][batch["masked_lm_weights"] > 0]
    assert targets.size and not np.isin(targets, list(tokenizer.special_ids)).any()
    assert (targets >= len(SPECIALS)).all()  # Real pieces: encode never yields [unused*].
