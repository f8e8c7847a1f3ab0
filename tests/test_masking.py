"""Masked-LM features: BERT's counts, 80/10/10 split, specials, whole words, layout and dtypes."""

from collections.abc import Collection

import numpy as np
import pytest

from data_pipeline import masking

V, S, P = 1000, 128, 20
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = frozenset({PAD, UNK, CLS, SEP, MASK})
# Whole-word table for the tests: even ids start a word, odd ids continue one.
WORD_START = np.arange(V) % 2 == 0
WORD_START[list(SPECIALS)] = False


def _mask_instance(
    tokens_a: np.ndarray,
    tokens_b: np.ndarray,
    is_random_next: bool,
    *,
    rng: np.random.Generator,
    max_seq_length: int,
    max_predictions_per_seq: int,
    masked_lm_prob: float,
    vocab_size: int,
    cls_id: int,
    sep_id: int,
    mask_id: int,
    special_ids: Collection[int],
    is_word_start: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The padded features of one example, laid out as the loader lays out a row (the Batch
    table of docs/architecture.md), from the library's pack_pair and mask_sequence.

    Returns input_ids, input_mask, segment_ids int32 [S]; masked_lm_positions, masked_lm_ids
    int32 [P]; masked_lm_weights float32 [P]; next_sentence_labels int32 []; and
    next_sentence_weights float32 [] (S = max_seq_length, P = max_predictions_per_seq).
    """
    input_ids, len_first = masking.pack_pair(tokens_a, tokens_b, cls_id=cls_id, sep_id=sep_id)
    n = len(input_ids)
    if n > max_seq_length:
        raise ValueError(f"instance of {n} tokens exceeds max_seq_length={max_seq_length}")
    masked, positions, original = masking.mask_sequence(
        input_ids,
        rng=rng,
        max_predictions_per_seq=max_predictions_per_seq,
        masked_lm_prob=masked_lm_prob,
        vocab_size=vocab_size,
        mask_id=mask_id,
        special_ids=special_ids,
        is_word_start=is_word_start,
    )
    k = len(positions)
    features = {
        "input_ids": np.zeros(max_seq_length, np.int32),
        "input_mask": np.zeros(max_seq_length, np.int32),
        "segment_ids": np.zeros(max_seq_length, np.int32),
        "masked_lm_positions": np.zeros(max_predictions_per_seq, np.int32),
        "masked_lm_ids": np.zeros(max_predictions_per_seq, np.int32),
        "masked_lm_weights": np.zeros(max_predictions_per_seq, np.float32),
        "next_sentence_labels": np.int32(is_random_next),
        "next_sentence_weights": np.float32(1.0),
    }
    features["input_ids"][:n] = masked
    features["input_mask"][:n] = 1
    features["segment_ids"][len_first:n] = 1
    features["masked_lm_positions"][:k] = positions
    features["masked_lm_ids"][:k] = original
    features["masked_lm_weights"][:k] = 1.0
    return features


def _mask(tokens_a, tokens_b, seed, *, max_predictions=P, is_word_start=None, is_random_next=0):
    return _mask_instance(
        np.asarray(tokens_a, np.int32),
        np.asarray(tokens_b, np.int32),
        bool(is_random_next),
        rng=np.random.default_rng(seed),
        max_seq_length=S,
        max_predictions_per_seq=max_predictions,
        masked_lm_prob=0.15,
        vocab_size=V,
        cls_id=CLS,
        sep_id=SEP,
        mask_id=MASK,
        special_ids=SPECIALS,
        is_word_start=is_word_start,
    )


def _random_pair(rng):
    """Two segments of ordinary tokens with a few [UNK]s, 20-125 tokens in all."""
    len_a = int(rng.integers(5, 60))
    len_b = int(rng.integers(12, 125 - len_a + 1))
    tokens = rng.integers(5, V, len_a + len_b)
    tokens[rng.random(len(tokens)) < 0.05] = UNK
    return tokens[:len_a], tokens[len_a:]


def test_features_layout_and_dtypes():
    f = _mask([10, 11, 12], [20, 21], seed=0, is_random_next=1)
    expected = {
        "input_ids": ((S,), np.int32),
        "input_mask": ((S,), np.int32),
        "segment_ids": ((S,), np.int32),
        "masked_lm_positions": ((P,), np.int32),
        "masked_lm_ids": ((P,), np.int32),
        "masked_lm_weights": ((P,), np.float32),
        "next_sentence_labels": ((), np.int32),
        "next_sentence_weights": ((), np.float32),
    }
    assert {k: (v.shape, v.dtype) for k, v in f.items()} == expected
    assert f["input_mask"][:8].tolist() == [1] * 8 and not f["input_mask"][8:].any()
    assert f["segment_ids"][:8].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert not f["segment_ids"][8:].any() and not f["input_ids"][8:].any()
    unmasked = f["input_ids"][:8].copy()
    unmasked[f["masked_lm_positions"][:1]] = f["masked_lm_ids"][:1]
    assert unmasked.tolist() == [CLS, 10, 11, 12, SEP, 20, 21, SEP]
    assert f["next_sentence_labels"] == 1 and f["next_sentence_weights"] == 1.0


def test_masking_statistics_match_bert():
    rng = np.random.default_rng(0)
    outcome = {"mask": 0, "random": 0, "kept": 0}
    predicted = total = 0
    for seed in range(1000):
        a, b = _random_pair(rng)
        f = _mask(a, b, seed)
        original = np.concatenate([[CLS], a, [SEP], b, [SEP]])
        n = len(original)
        k = int(f["masked_lm_weights"].sum())
        # BERT's count: the sequence length includes [CLS] and both [SEP]s; the cap never binds
        # here (n <= 128 gives at most 19), and there are always enough candidates.
        assert k == min(P, max(1, round(n * 0.15)))
        assert f["masked_lm_weights"].tolist() == [1.0] * k + [0.0] * (P - k)
        positions = f["masked_lm_positions"][:k]
        assert np.all(np.diff(positions) > 0)  # Sorted and distinct.
        assert not np.isin(original[positions], list(SPECIALS)).any()  # Never a special token.
        np.testing.assert_array_equal(f["masked_lm_ids"][:k], original[positions])
        assert not f["masked_lm_positions"][k:].any() and not f["masked_lm_ids"][k:].any()
        untouched = np.ones(n, bool)
        untouched[positions] = False
        np.testing.assert_array_equal(f["input_ids"][:n][untouched], original[untouched])
        new = f["input_ids"][positions]
        assert not np.isin(new[new != MASK], list(SPECIALS)).any()  # Replacements are words.
        outcome["mask"] += int(np.sum(new == MASK))
        outcome["kept"] += int(np.sum(new == original[positions]))
        outcome["random"] += int(np.sum((new != MASK) & (new != original[positions])))
        predicted, total = predicted + k, total + n
    # Rounding is the only gap between the exact count above and 15%: its std is about
    # sqrt(1000 / 12) = 9 tokens in ~70k, so 0.005 is generous.
    assert abs(predicted / total - 0.15) < 0.005
    # About 13k predictions: the standard error of a share is at most 0.0044, so 0.02 is > 4
    # standard errors; a random token equals the original once in 995, far below that.
    assert abs(outcome["mask"] / predicted - 0.8) < 0.02
    assert abs(outcome["random"] / predicted - 0.1) < 0.02
    assert abs(outcome["kept"] / predicted - 0.1) < 0.02


def test_every_ordinary_position_is_equally_likely():
    a, b = [7, UNK, 9, 10, 11], [12, 13, UNK, 15]
    counts = np.zeros(S)
    for seed in range(3000):
        f = _mask(a, b, seed)
        counts[f["masked_lm_positions"][f["masked_lm_weights"] > 0]] += 1
    candidates = [1, 3, 4, 5, 7, 8, 10]  # Not [CLS], [SEP] or [UNK].
    assert counts[candidates].sum() == counts.sum() == 3000 * 2  # round(12 * 0.15) = 2.
    # Each candidate: 3000 * 2/7 = 857 expected, binomial std 25; allow 6 of them.
    assert np.all(np.abs(counts[candidates] - 6000 / 7) < 150)


def test_cap_on_predictions():
    rng = np.random.default_rng(1)
    for seed in range(50):
        a, b = rng.integers(5, V, 60), rng.integers(5, V, 60)
        assert _mask(a, b, seed, max_predictions=5)["masked_lm_weights"].sum() == 5
        f = _mask(a, b, seed, max_predictions=5, is_word_start=WORD_START)
        assert 1 <= f["masked_lm_weights"].sum() <= 5


def _words(ids):
    """Independent grouping: a word is a word-start piece and the continuation pieces after it;
    a continuation right after a special token starts its own word."""
    words, current = [], None
    for position, token in enumerate(ids):
        if token in SPECIALS:
            current = None
        elif WORD_START[token] or current is None:
            current = [position]
            words.append(current)
        else:
            current.append(position)
    return words


def test_whole_word_masking_masks_whole_words():
    rng = np.random.default_rng(2)
    multi_piece_words_chosen = split_across_sep = 0
    for seed in range(300):
        pieces = []
        for _ in range(rng.integers(15, 35)):
            pieces.append(2 * rng.integers(3, V // 2))  # Even: starts a word.
            pieces += (2 * rng.integers(3, V // 2, rng.integers(0, 3)) + 1).tolist()  # Odd.
        cut = len(pieces) // 2
        a, b = pieces[:cut], [7] + pieces[cut:]  # B begins with a continuation piece (odd).
        f = _mask(a, b, seed, is_word_start=WORD_START)
        original = np.concatenate([[CLS], a, [SEP], b, [SEP]])
        k = int(f["masked_lm_weights"].sum())
        chosen = set(f["masked_lm_positions"][:k].tolist())
        assert 1 <= k <= min(P, round(len(original) * 0.15))
        words = _words(original)
        for word in words:
            covered = chosen.intersection(word)
            assert not covered or covered == set(word), (word, chosen)
            multi_piece_words_chosen += len(word) > 1 and bool(covered)
        # The piece after [SEP] is a word of its own, not glued to A's last word.
        first_b = next(w for w in words if w[0] > len(a))
        last_a = next(w for w in reversed(words) if w[0] <= len(a))
        split_across_sep += bool(chosen.intersection(first_b)) != bool(chosen.intersection(last_a))
        np.testing.assert_array_equal(f["masked_lm_ids"][:k], original[sorted(chosen)])
    assert multi_piece_words_chosen > 100
    assert split_across_sep > 10


def test_pure_function_of_the_rng():
    a, b = list(range(10, 40)), list(range(50, 90))
    f1, f2, f3 = _mask(a, b, [7, 3, 0]), _mask(a, b, [7, 3, 0]), _mask(a, b, [7, 3, 1])
    for k in f1:
        np.testing.assert_array_equal(f1[k], f2[k])
    assert not np.array_equal(f1["masked_lm_positions"], f3["masked_lm_positions"])


def test_too_long_instance_is_rejected():
    with pytest.raises(ValueError, match="exceeds max_seq_length=128"):
        _mask(np.full(100, 9), np.full(30, 9), seed=0)
