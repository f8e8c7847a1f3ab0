"""Tokenizers: one interface (`Tokenizer`), two implementations, one loader (`load`).

* `unigram.SentencePieceTokenizer`: the sentencepiece unigram models this project trains, with
  BERT's special tokens at fixed ids ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4);
* `wordpiece.WordPieceTokenizer`: a BERT `vocab.txt` (e.g. imported from Hugging Face), with its
  normalization options beside it.

The data pipeline, masking and fine-tuning see only the `Tokenizer` protocol, so they never ask
which one they have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the project may ask of a tokenizer."""

    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: frozenset[int]  # Never chosen as MLM targets; inserted by id, never encoded.
    lower_case: bool  # The model folds case itself.
    model_path: str  # The file it was loaded from.
    fingerprint: str  # sha256 of what determines its ids: keys caches and shard manifests.

    @property
    def vocab_size(self) -> int: ...

    @property
    def is_word_start(self) -> np.ndarray:
        """bool [vocab_size]: the piece begins a word (whole-word masking groups the rest)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and the (start, end) characters of `text` each id covers."""
        ...

    def encode_batch(self, texts: Iterable[str], num_threads: int = -1) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def id_to_piece(self, token_id: int) -> str: ...

    def piece_to_id(self, piece: str) -> int: ...


def load(path: str) -> Tokenizer:
    """The tokenizer stored at `path`: a WordPiece `vocab.txt` or a sentencepiece `.model`."""
    from data_pipeline.vocab import unigram, wordpiece  # Both import this module's Protocol.

    if str(path).endswith(".txt"):
        return wordpiece.WordPieceTokenizer(str(path))
    return unigram.SentencePieceTokenizer(str(path))
