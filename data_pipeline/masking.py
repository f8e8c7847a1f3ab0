"""Turns one NSP instance into BERT's masked-LM features (one example, numpy).

Sequence: `[CLS] A [SEP] B [SEP]`, segment 0 up to the first [SEP], 1 after. Masking follows
google-research/bert `create_masked_lm_predictions`:

* num_to_predict = min(max_predictions_per_seq, max(1, round(len(sequence) * masked_lm_prob))),
  where the length counts [CLS] and both [SEP]s, as BERT's does;
* candidates are the positions of non-special tokens ([UNK] is never a target either), shuffled;
  with whole-word masking, a piece that does not start a word joins the word before it, and a
  word is taken whole or skipped when it would overshoot num_to_predict;
* each chosen position becomes [MASK] 80% of the time, a random non-special token 10%, and stays
  unchanged 10%.

The rng is passed in; the loader builds it as
`np.random.default_rng([seed, MASKS, example, epoch])`, so masks are a pure function of those
numbers (dynamic masking, no stored masks).
"""

import dataclasses
import functools
from collections.abc import Collection

import numpy as np


@functools.lru_cache(maxsize=8)
def _vocab_tables(vocab_size: int, special_ids: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(is_special bool [vocab], the ids a masked token may become at random: the non-special)."""
    is_special = np.zeros(vocab_size, bool)
    is_special[list(special_ids)] = True
    return is_special, np.flatnonzero(~is_special).astype(np.int32)


def _word_ids(candidates: np.ndarray, starts_word: np.ndarray) -> np.ndarray:
    """Word index of each sorted candidate position: a word starts at a word-start piece or
    wherever the candidates are not contiguous (a special token never belongs to a word)."""
    new_word = np.ones(len(candidates), bool)
    new_word[1:] = starts_word[1:] | (np.diff(candidates) != 1)
    return np.cumsum(new_word) - 1


def mask_sequence(
    input_ids: np.ndarray,
    *,
    rng: np.random.Generator,
    max_predictions_per_seq: int,
    masked_lm_prob: float,
    vocab_size: int,
    mask_id: int,
    special_ids: Collection[int],
    is_word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chooses and corrupts the prediction positions of one unpadded sequence.

    Args:
      input_ids: int32 [n], `[CLS] A [SEP] B [SEP]`, not padded.
      is_word_start: bool [vocab] for whole-word masking; None masks pieces independently.

    Returns:
      (masked input_ids [n], positions [k] ascending, original ids [k]), k <= the cap.
    """
    is_special, replacement_ids = _vocab_tables(vocab_size, tuple(sorted(special_ids)))
    candidates = np.flatnonzero(~is_special[input_ids])
    num_to_predict = min(max_predictions_per_seq, max(1, round(len(input_ids) * masked_lm_prob)))
    if is_word_start is None:
        positions = rng.permutation(candidates)[:num_to_predict]
    else:
        word = _word_ids(candidates, is_word_start[input_ids[candidates]])
        sizes = np.bincount(word)  # Pieces per word.
        order = rng.permutation(len(sizes))
        chosen, count = np.zeros(len(sizes), bool), 0
        for w, size in zip(order.tolist(), sizes[order].tolist()):
            if count >= num_to_predict:
                break
            if count + size <= num_to_predict:  # Never split a word to fill the cap.
                chosen[w] = True
                count += size
        positions = candidates[chosen[word]]
    positions = np.sort(positions)
    original = input_ids[positions]

    # 80% [MASK], 10% random token, 10% unchanged.
    u = rng.random(len(positions))
    random_tokens = replacement_ids[rng.integers(0, len(replacement_ids), len(positions))]
    replaced = np.where(u < 0.8, mask_id, np.where(u < 0.9, random_tokens, original))
    masked = input_ids.copy()
    masked[positions] = replaced
    return masked, positions.astype(np.int32), original.astype(np.int32)


def pack_pair(
    tokens_a: np.ndarray, tokens_b: np.ndarray, *, cls_id: int, sep_id: int
) -> tuple[np.ndarray, int]:
    """`[CLS] A [SEP] B [SEP]` as int32 [n], and the length of segment 0 (`[CLS] A [SEP]`)."""
    input_ids = np.concatenate([[cls_id], tokens_a, [sep_id], tokens_b, [sep_id]]).astype(np.int32)
    return input_ids, len(tokens_a) + 2


@dataclasses.dataclass(frozen=True)
class MaskingVocab:
    """What masking needs to know about the tokenizer."""

    vocab_size: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: frozenset[int]
    is_word_start: np.ndarray  # bool [vocab_size]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "MaskingVocab":
        """From a `data_pipeline.vocab.Tokenizer`."""
        return cls(
            vocab_size=tokenizer.vocab_size,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            mask_id=tokenizer.mask_id,
            special_ids=frozenset(tokenizer.special_ids),
            is_word_start=tokenizer.is_word_start,
        )
