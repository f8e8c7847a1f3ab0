"""`encode_with_offsets`: the same ids as `encode`, and character spans that Hugging Face's fast
tokenizers agree with (what tagging and QA map their predictions back to text through)."""

import pytest

from data_pipeline.vocab import unigram, wordpiece
from tests.test_wordpiece import PIECES, SENTENCES

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("wordpiece") / wordpiece.VOCAB_FILE
    path.write_text("".join(p + "\n" for p in PIECES), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("lower_case", [True, False])
def test_wordpiece_spans_equal_hugging_face_fast_offsets(vocab_path, lower_case):
    ours = wordpiece.WordPieceTokenizer(vocab_path, lower_case=lower_case)
    hf = transformers.BertTokenizer(vocab=vocab_path, do_lower_case=lower_case)
    for text in SENTENCES:
        ids, spans = ours.encode_with_offsets(text)
        assert ids == ours.encode(text), text
        out = hf(text, return_offsets_mapping=True, add_special_tokens=False)
        assert out["input_ids"] == ids, text
        assert [tuple(x) for x in out["offset_mapping"]] == spans, text


def test_sentencepiece_spans_cover_each_piece_without_its_space(pipeline_tokenizer):
    tokenizer = unigram.SentencePieceTokenizer(pipeline_tokenizer.model_path)
    text = "  The  café sat, on the mat!\tHello  wörld 42 — naïve."  # Multi-byte too.
    ids, spans = tokenizer.encode_with_offsets(text)
    assert ids == tokenizer.encode(text)
    # A bare word-start piece ('▁' before a piece it cannot join) covers only its space: empty.
    assert all(a <= b for a, b in spans) and spans == sorted(spans)
    covered = "".join(text[a:b] for a, b in spans)
    assert covered == "".join(text.split())  # Every visible character once, no whitespace.
    for i, (a, b) in zip(ids, spans):
        piece = tokenizer.id_to_piece(i).lstrip(unigram.WORD_START)
        if i != tokenizer.unk_id:
            assert text[a:b].lower() == piece, (text[a:b], piece)
