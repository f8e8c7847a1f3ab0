"""Tokenizers across the Hugging Face boundary: ours to HF files (export), HF files to ours.

Export, so that `transformers.AutoTokenizer.from_pretrained(HF_DIR)` gives our ids, [CLS] and
[SEP] included:
* sentencepiece unigram (ours) -> `tokenizer.json` for the `tokenizers` library, loaded by
  `PreTrainedTokenizerFast`: the same pieces and scores (Unigram), sentencepiece's normalizer
  (its precompiled NFKC / case-folding charsmap, then its whitespace rules), Metaspace word
  boundaries, and `[CLS] A [SEP] B [SEP]` with segment ids; the `.model` rides along as
  `tokenizer.model`, so importing the folder back restores the exact same tokenizer;
* WordPiece (imported) -> `vocab.txt` + a `BertTokenizer` config with its normalization options.

Import, into a workdir: a `vocab.txt`, a WordPiece `tokenizer.json` (what transformers v5 saves
for BERT), or a sentencepiece `.model` with our special-token layout.

One known difference: a literal "[MASK]" typed in the text is one special token to HF (what the
fill-mask pipeline relies on) but plain text to us; the data pipeline inserts specials by id.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from sentencepiece import sentencepiece_model_pb2

from data_pipeline import vocab
from data_pipeline.errors import DataError, MissingInputError
from data_pipeline.vocab import unigram, wordpiece
from pretrain.training import workdir as workdir_lib

HF_TOKENIZER_JSON = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_SENTENCEPIECE = "tokenizer.model"
SENTENCEPIECE_NAMES = (HF_SENTENCEPIECE, "spiece.model", "sentencepiece.bpe.model")
_SPECIAL_KEYS = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
_OPTION_KEYS = (
    "do_lower_case",
    "strip_accents",
    "tokenize_chinese_chars",
    *_SPECIAL_KEYS,
)
_MODEL_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]
_UNIGRAM = 1  # sentencepiece TrainerSpec.model_type.
_FILLER = "[EMBEDDING_ROW_{}]"  # Vocabulary lines for embedding rows a checkpoint has beyond it.

Tokenizer = vocab.Tokenizer


def _special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    ids = (
        tokenizer.pad_id,
        tokenizer.unk_id,
        tokenizer.cls_id,
        tokenizer.sep_id,
        tokenizer.mask_id,
    )
    return {key: tokenizer.id_to_piece(i) for key, i in zip(_SPECIAL_KEYS, ids, strict=True)}


def _sentencepiece_tokenizer_json(tokenizer: unigram.SentencePieceTokenizer) -> str:
    """Our sentencepiece unigram model as a `tokenizers` pipeline (JSON) with the same ids."""
    # Export-only dependency (the `hf` extra): the data pipeline never needs it.
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers.models import Unigram

    with open(tokenizer.model_path, "rb") as f:
        proto = sentencepiece_model_pb2.ModelProto.FromString(f.read())
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != _UNIGRAM or trainer.byte_fallback or not norm.escape_whitespaces:
        raise DataError(
            f"{tokenizer.model_path} is not a plain unigram sentencepiece model (model_type="
            f"{trainer.model_type}, byte_fallback={trainer.byte_fallback}): only tokenizers "
            "trained by `python -m data_pipeline.tokenizer` export."
        )
    fast = FastTokenizer(
        Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=tokenizer.unk_id)
    )
    # sentencepiece: charsmap (NFKC, + case folding for nmt_nfkc_cf) first, then whitespace:
    # drop it at both ends, collapse runs to one space. The left end needs no rule: Metaspace
    # turns a leading space into the word-boundary mark it would add anyway.
    steps = (
        [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    )
    if norm.remove_extra_whitespaces:
        steps += [
            normalizers.Strip(left=False, right=True),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    fast.normalizer = normalizers.Sequence(steps)
    # "first": only the text's first word gets the dummy prefix, so after "[MASK]" a word
    # starts with '▁' only where the text has a space (which [MASK]'s lstrip does not take).
    scheme = "first" if norm.add_dummy_prefix else "never"
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    fast.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    specials = _special_tokens(tokenizer)
    fast.add_special_tokens(
        [
            AddedToken(name, special=True, normalized=False, lstrip=key == "mask_token")
            for key, name in specials.items()
        ]
    )
    cls, sep = specials["cls_token"], specials["sep_token"]
    fast.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)],
    )
    return fast.to_str(pretty=True)


def export_tokenizer(tokenizer: Tokenizer, output_dir: str, model_max_length: int) -> list[str]:
    """Writes HF tokenizer files for `tokenizer` into `output_dir`; returns their names."""
    config: dict[str, Any] = {
        "model_max_length": model_max_length,
        "model_input_names": _MODEL_INPUTS,
        "clean_up_tokenization_spaces": False,
        **_special_tokens(tokenizer),
    }
    if isinstance(tokenizer, wordpiece.WordPieceTokenizer):
        tokenizer.save(output_dir)  # vocab.txt + its options under HF's key names.
        config |= {"tokenizer_class": "BertTokenizer", **tokenizer.options()}
        written = [wordpiece.VOCAB_FILE]
    else:
        with open(os.path.join(output_dir, HF_TOKENIZER_JSON), "w", encoding="utf-8") as f:
            f.write(_sentencepiece_tokenizer_json(tokenizer))
        shutil.copyfile(tokenizer.model_path, os.path.join(output_dir, HF_SENTENCEPIECE))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        written = [HF_TOKENIZER_JSON, HF_SENTENCEPIECE]
    with open(os.path.join(output_dir, HF_TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return [*written, HF_TOKENIZER_CONFIG]


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} does not hold a JSON object")
    return value


def _tokenizer_json_wordpiece(path: str) -> tuple[list[str], dict[str, Any]]:
    """(pieces in id order, options) of a WordPiece `tokenizer.json`, as transformers v5 saves
    BERT's tokenizer; the options under `tokenizer_config.json` names, from its normalizer."""
    spec = _read_json(path)
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
        raise DataError(
            f"{path} holds a {model.get('type')} model and no vocab.txt or sentencepiece .model "
            "is beside it: only WordPiece (BERT) or this project's sentencepiece tokenizers import."
        )
    if model.get("continuing_subword_prefix", "##") != wordpiece.CONTINUATION:
        raise DataError(f"{path}: WordPiece continuation prefix must be '##'")
    vocab = {**model["vocab"], **{t["content"]: t["id"] for t in spec.get("added_tokens", [])}}
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise DataError(f"{path}: token ids are not 0..{len(vocab) - 1} without gaps")
    normalizer = spec.get("normalizer") or {}
    if normalizer and normalizer.get("type") != "BertNormalizer":
        raise DataError(
            f"{path}: normalizer {normalizer.get('type')!r} is not BERT's: it cannot be reproduced"
        )
    options = {"unk_token": model.get("unk_token", "[UNK]")}
    if normalizer:
        options |= {
            "do_lower_case": normalizer.get("lowercase", True),
            "strip_accents": normalizer.get("strip_accents"),
            "tokenize_chinese_chars": normalizer.get("handle_chinese_chars", True),
        }
    return sorted(vocab, key=vocab.get), options


def import_tokenizer(hf_dir: str, workdir: str, embedding_rows: int) -> Tokenizer:
    """Writes the tokenizer of the HF folder `hf_dir` into `workdir`; returns it, loaded.

    Looked for in this order: `vocab.txt`, a sentencepiece model, a WordPiece `tokenizer.json`.
    WordPiece options come from `tokenizer_config.json`, else from `tokenizer.json`'s normalizer
    (as in transformers). A WordPiece vocabulary shorter than the checkpoint's `embedding_rows`
    is padded with filler pieces no text produces, so ids and embedding rows stay one to one.
    """
    vocab_txt = os.path.join(hf_dir, wordpiece.VOCAB_FILE)
    tokenizer_json = os.path.join(hf_dir, HF_TOKENIZER_JSON)
    config_path = os.path.join(hf_dir, HF_TOKENIZER_CONFIG)
    sentencepiece = [n for n in SENTENCEPIECE_NAMES if os.path.isfile(os.path.join(hf_dir, n))]

    if sentencepiece and not os.path.isfile(vocab_txt):
        source = os.path.join(hf_dir, sentencepiece[0])
        try:
            tokenizer = unigram.SentencePieceTokenizer(source)  # Checks our special-token layout.
        except DataError as e:
            raise DataError(f"{e} (only this project's sentencepiece layout imports)") from None
        if tokenizer.vocab_size != embedding_rows:
            raise DataError(
                f"{source} has {tokenizer.vocab_size} pieces but the checkpoint "
                f"{embedding_rows} embedding rows: they do not belong together."
            )
        target = str(workdir_lib.tokenizer_path(workdir))
        shutil.copyfile(source, target)
        return unigram.SentencePieceTokenizer(target)

    if not os.path.isfile(vocab_txt) and not os.path.isfile(tokenizer_json):
        raise MissingInputError(
            f"{hf_dir} holds no tokenizer: expected vocab.txt, tokenizer.json or a sentencepiece "
            f"model ({', '.join(SENTENCEPIECE_NAMES)})."
        )
    pieces, options = [], {}
    has_vocab_txt = os.path.isfile(vocab_txt)
    if os.path.isfile(tokenizer_json) and (
        not has_vocab_txt or _read_json(tokenizer_json).get("model", {}).get("type") == "WordPiece"
    ):
        pieces, options = _tokenizer_json_wordpiece(tokenizer_json)
    if os.path.isfile(config_path):
        options |= {k: v for k, v in _read_json(config_path).items() if k in _OPTION_KEYS}
    if has_vocab_txt:
        source = wordpiece.WordPieceTokenizer(vocab_txt)  # Validates the special tokens.
        pieces = [source.id_to_piece(i) for i in range(source.vocab_size)]
    if len(pieces) > embedding_rows:
        raise DataError(
            f"The tokenizer of {hf_dir} has {len(pieces)} tokens but the checkpoint only "
            f"{embedding_rows} embedding rows: they do not belong together."
        )
    pieces += [_FILLER.format(i) for i in range(len(pieces), embedding_rows)]
    return wordpiece.WordPieceTokenizer(wordpiece.write_vocab(workdir, pieces, options))
