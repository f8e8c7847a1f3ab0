"""BERT's WordPiece tokenizer (a `vocab.txt`), in pure Python, for models imported from HF.

Satisfies `data_pipeline.vocab.Tokenizer`, so the data pipeline, masking and
fine-tuning run unchanged on a Hugging Face BERT vocabulary. Text goes through BERT's basic
tokenizer, then greedy longest-match-first WordPiece, as google-research/bert and Hugging Face's
`BertTokenizer` do:

1. drop NUL, U+FFFD and control characters; every whitespace character becomes a space;
2. put spaces around CJK ideographs (each becomes its own word);
3. strip accents (NFD, drop non-spacing marks), then lower-case, each only if configured;
4. split on whitespace, then make every punctuation character its own word;
5. split each word into the longest vocabulary prefix, then '##'-prefixed continuations; a word
   with no such split, or longer than 100 characters, becomes one [UNK].

The special tokens sit wherever the vocabulary puts them (BERT's: [PAD]=0 [UNK]=100 [CLS]=101
[SEP]=102 [MASK]=103). The options live next to the vocabulary in Hugging Face's
`tokenizer_config.json` (`do_lower_case`, `strip_accents`, `tokenize_chinese_chars`, and the
special tokens' names), so a vocabulary carries its own normalization wherever it is copied.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from data_pipeline import files
from data_pipeline.errors import DataError, MissingInputError

VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"  # Hugging Face's name; holds the options below.
CONTINUATION = "##"
MAX_WORD_CHARS = 100  # Longer words become [UNK] (BERT's max_input_chars_per_word).
_SPECIAL_DEFAULTS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
# CJK Unified Ideographs and their extensions and compatibility blocks (not Hangul or kana).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
_WORD_CACHE_SIZE = 1 << 17  # Distinct words remembered; Zipf's law makes hits the common case.


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    # All non-alphanumeric printable ASCII counts ('$', '^', '`' are not Unicode punctuation).
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(char: str) -> bool:
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _special_name(value: Any, default: str) -> str:
    """A special token's name from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return default


def write_vocab(directory: str, pieces: Sequence[str], options: Mapping[str, Any]) -> str:
    """Writes `tokenizer_config.json` (`options`), then `vocab.txt` (`pieces`, one per line, in id
    order) into `directory`; returns the vocabulary's path.

    The vocabulary goes last and atomically: a reader that finds it also finds its options.
    """
    bad = [p for p in pieces if "\n" in p or "\r" in p]
    if bad:
        raise DataError(f"WordPiece pieces {bad[:3]} hold line breaks: they cannot be stored")
    os.makedirs(directory, exist_ok=True)
    files.write_text(os.path.join(directory, CONFIG_FILE), json.dumps(dict(options), indent=2))
    vocab_path = os.path.join(directory, VOCAB_FILE)
    files.write_text(vocab_path, "".join(piece + "\n" for piece in pieces))
    return vocab_path


class WordPieceTokenizer:
    """A BERT WordPiece vocabulary with its basic-tokenizer options (see the module docstring)."""

    def __init__(
        self,
        vocab_path: str,
        *,
        lower_case: bool | None = None,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool | None = None,
    ):
        """Loads `vocab_path`; options not given come from `tokenizer_config.json` beside it.

        Without that file: lower-case and strip accents (uncased BERT). `strip_accents=None`
        follows `lower_case`, as in BERT.
        """
        if not os.path.isfile(vocab_path):
            raise MissingInputError(
                f"WordPiece vocabulary {vocab_path!r} not found: point at a BERT vocab.txt"
            )
        with open(vocab_path, encoding="utf-8") as f:
            pieces = [line.rstrip("\n") for line in f]  # Line i is piece i, as HF reads it.
        options = self._read_options(os.path.dirname(vocab_path))
        if lower_case is None:
            lower_case = bool(options.get("do_lower_case", True))
        if strip_accents is None:
            strip_accents = options.get("strip_accents")
        if tokenize_chinese_chars is None:
            tokenize_chinese_chars = bool(options.get("tokenize_chinese_chars", True))
        self.lower_case = lower_case
        self.strip_accents = lower_case if strip_accents is None else bool(strip_accents)
        self.tokenize_chinese_chars = tokenize_chinese_chars

        self._pieces = pieces
        self._ids = {piece: i for i, piece in enumerate(pieces)}  # Duplicates: last wins, as HF.
        self.special_tokens = {
            key: _special_name(options.get(key), default)
            for key, default in _SPECIAL_DEFAULTS.items()
        }
        missing = [name for name in self.special_tokens.values() if name not in self._ids]
        if missing:
            raise DataError(
                f"WordPiece vocabulary {vocab_path!r} lacks the special tokens {missing}: BERT "
                f"needs {list(self.special_tokens.values())} in it"
            )
        ids = {key: self._ids[name] for key, name in self.special_tokens.items()}
        self.pad_id, self.unk_id, self.cls_id = ids["pad_token"], ids["unk_token"], ids["cls_token"]
        self.sep_id, self.mask_id = ids["sep_token"], ids["mask_token"]
        self.special_ids = frozenset(ids.values())
        self.model_path = vocab_path
        self.fingerprint = hashlib.sha256(
            "\n".join(pieces).encode("utf-8") + self._options_json().encode("utf-8")
        ).hexdigest()  # Keys caches built with it: the vocabulary and the normalization.
        self._word_cache: dict[str, tuple[int, ...]] = {}

    @staticmethod
    def _read_options(directory: str) -> dict[str, Any]:
        path = os.path.join(directory, CONFIG_FILE)
        if not os.path.isfile(path):
            return {}
        try:
            with open(path, encoding="utf-8") as f:
                options = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}): fix or remove it") from None
        return options if isinstance(options, dict) else {}

    def _options_json(self) -> str:
        return json.dumps(self.options(), sort_keys=True)

    def options(self) -> dict[str, Any]:
        """This tokenizer's `tokenizer_config.json` entries (Hugging Face's key names)."""
        return {
            "do_lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            **self.special_tokens,
        }

    def save(self, directory: str) -> str:
        """Writes this vocabulary and its options into `directory` (see `write_vocab`)."""
        return write_vocab(directory, self._pieces, self.options())

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @functools.cached_property
    def is_word_start(self) -> np.ndarray:
        """[vocab] bool: the piece begins a word (it has no '##'); special tokens never do."""
        starts = np.array([not p.startswith(CONTINUATION) for p in self._pieces], bool)
        starts[list(self.special_ids)] = False
        return starts

    def _normalized_words(self, text: str) -> list[tuple[str, list[int]]]:
        """Steps 1-4 of the module docstring: each normalized word or punctuation character of
        `text`, with the index in `text` of the character each of its characters came from."""
        words: list[tuple[str, list[int]]] = []
        chars: list[str] = []
        origins: list[int] = []

        def end_word() -> None:
            if chars:
                words.append(("".join(chars), list(origins)))
                chars.clear()
                origins.clear()

        for i, char in enumerate(text):
            if char in "\x00\ufffd" or _is_control(char):
                continue
            if char.isspace():
                end_word()
                continue
            if self.tokenize_chinese_chars and _is_cjk(char):
                end_word()
                words.append((char, [i]))
                continue
            if self.strip_accents:
                char = "".join(
                    c for c in unicodedata.normalize("NFD", char) if unicodedata.category(c) != "Mn"
                )
            if self.lower_case:
                char = char.lower()  # Per character, as HF's (no final sigma).
            for c in char:
                if _is_punctuation(c):
                    end_word()
                    words.append((c, [i]))
                else:
                    chars.append(c)
                    origins.append(i)
        end_word()
        return words

    def basic_tokenize(self, text: str) -> list[str]:
        """Steps 1-4 of the module docstring: the normalized words and punctuation of `text`."""
        return [word for word, _ in self._normalized_words(text)]

    def _word_to_ids(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first split of one word (step 5)."""
        if len(word) > MAX_WORD_CHARS:
            return (self.unk_id,)
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
                if (piece_id := self._ids.get(piece)) is not None:
                    ids.append(piece_id)
                    start = end
                    break
            else:
                return (self.unk_id,)
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP] (the pipeline inserts those by id)."""
        ids = []
        for word in self.basic_tokenize(text):
            cached = self._word_cache.get(word)
            if cached is None:
                if len(self._word_cache) >= _WORD_CACHE_SIZE:
                    self._word_cache.clear()
                cached = self._word_cache[word] = self._word_to_ids(word)
            ids.extend(cached)
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and, per id, the (start, end) characters of `text` it covers."""
        ids, spans = [], []
        for word, origins in self._normalized_words(text):
            pieces = self._word_to_ids(word)
            if pieces == (self.unk_id,):
                ids.append(self.unk_id)
                spans.append((origins[0], origins[-1] + 1))
                continue
            start = 0
            for piece_id in pieces:
                length = len(self._pieces[piece_id]) - (len(CONTINUATION) if start else 0)
                ids.append(piece_id)
                spans.append((origins[start], origins[start + length - 1] + 1))
                start += length
        return ids, spans

    def encode_batch(self, texts: Iterable[str], num_threads: int = -1) -> list[list[int]]:
        """Token ids of many texts (`num_threads` is accepted for interface parity; unused)."""
        del num_threads  # Pure Python under the GIL: threads would not help.
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: '##' pieces glued to the one before; [PAD]/[CLS]/[SEP]/[MASK] dropped."""
        dropped = self.special_ids - {self.unk_id}
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i in dropped:
                continue
            piece = self._pieces[i]
            if piece.startswith(CONTINUATION) and words:
                words[-1] += piece[len(CONTINUATION) :]
            else:
                words.append(piece)
        return " ".join(words)

    def id_to_piece(self, token_id: int) -> str:
        return self._pieces[int(token_id)]

    def piece_to_id(self, piece: str) -> int:
        """The piece's id, or [UNK]'s for a piece not in the vocabulary."""
        return self._ids.get(piece, self.unk_id)
