"""Next-sentence-prediction instances of one unit, built the original BERT way.

The recipe is google-research/bert `create_pretraining_data.py` (`create_instances_from_document`):
per document, a target length (max_seq_length - 3, or with probability short_seq_prob a random
shorter one); sentences accumulate into a chunk until it reaches the target; the chunk splits at a
random sentence boundary into A and B; with probability random_next_prob (always when the chunk
is one sentence) B is instead drawn from another document and the unused sentences are put back;
the pair is truncated to max_seq_length - 3 by trimming the longer segment at a random end.

Segment B of a random-next pair comes from another document *of the same unit* (a unit is one
shard's worth of input, `data_pipeline/units.py`), exactly as when the original script was run
once per input shard, which is how it was run on Wikipedia and BooksCorpus. A unit of a single
document draws B from elsewhere in that document, as BERT does when it finds no other.

Masking is not done here: it is dynamic, per (seed, example index, epoch), in `masking.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from data_pipeline.errors import ConfigError

Instance = tuple[np.ndarray, np.ndarray, bool]  # (tokens_a, tokens_b, is_random_next)


def tokenize_documents(
    documents: Iterable[Sequence[str]], tokenizer, batch_sentences: int = 65536
) -> list[list[np.ndarray]]:
    """Encodes every sentence once: documents of int32 sentence arrays, empty ones dropped.

    `tokenizer` is a `data_pipeline.vocab.Tokenizer` (anything with `encode_batch`). Sentences
    are encoded in batches and packed into int32 at once, so memory stays near the size of the
    token arrays rather than of Python lists of ints.
    """
    result, pending, num_pending = [], [], 0

    def flush():
        encoded = iter(tokenizer.encode_batch([s for document in pending for s in document]))
        for document in pending:
            sentences = [np.asarray(next(encoded), np.int32) for _ in document]
            sentences = [s for s in sentences if s.size]
            if sentences:
                result.append(sentences)
        pending.clear()

    for document in documents:
        pending.append(document)
        num_pending += len(document)
        if num_pending >= batch_sentences:
            flush()
            num_pending = 0
    flush()
    return result


def truncation_counts(len_a: int, len_b: int, max_num_tokens: int) -> tuple[int, int]:
    """Tokens BERT's `truncate_seq_pair` removes from A and from B to fit `max_num_tokens`.

    BERT removes one token at a time from the longer segment (B on a tie); this is that loop in
    closed form: trim the longer down to the shorter, then alternate B, A, B, ...
    """
    excess = max(0, len_a + len_b - max_num_tokens)
    if len_a > len_b:
        cut_a, cut_b = min(excess, len_a - len_b), 0
    else:
        cut_a, cut_b = 0, min(excess, len_b - len_a)
    rest = excess - cut_a - cut_b
    return cut_a + rest // 2, cut_b + (rest + 1) // 2


def _trim(start: int, stop: int, cut: int, rng: np.random.Generator) -> tuple[int, int]:
    """Removes `cut` tokens from [start, stop), each from the front or the back by a coin flip."""
    from_front = int(rng.binomial(cut, 0.5)) if cut else 0
    return start + from_front, stop - (cut - from_front)


def _document_instances(
    doc: int,
    sentence_bounds: list[np.ndarray],
    rng: np.random.Generator,
    max_num_tokens: int,
    short_seq_prob: float,
    random_next_prob: float,
) -> list[tuple[int, int, int, int, bool]]:
    """BERT's `create_instances_from_document` on offsets: (a_start, a_stop, b_start, b_stop,
    is_random_next) per instance."""
    bounds = sentence_bounds[doc]  # [num_sentences + 1] offsets into the flat tokens.
    num_sentences = len(bounds) - 1
    # One target per document, as BERT does; short ones ease the gap to short fine-tuning inputs.
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_num_tokens + 1))

    instances = []
    chunk_start, i = 0, 0  # The chunk is sentences [chunk_start, i] of this document.
    while i < num_sentences:
        if i == num_sentences - 1 or bounds[i + 1] - bounds[chunk_start] >= target:
            chunk_len = i + 1 - chunk_start
            a_end = chunk_start + 1  # A is sentences [chunk_start, a_end).
            if chunk_len >= 2:
                a_end = chunk_start + int(rng.integers(1, chunk_len))
            a_start, a_stop = int(bounds[chunk_start]), int(bounds[a_end])
            is_random_next = chunk_len == 1 or rng.random() < random_next_prob
            if is_random_next:
                target_b = target - (a_stop - a_start)
                other = doc  # A unit of one document: B comes from elsewhere in it (as BERT).
                if len(sentence_bounds) > 1:
                    other = int(rng.integers(0, len(sentence_bounds) - 1))
                    other += other >= doc  # Uniform over the other documents.
                other_bounds = sentence_bounds[other]
                first = int(rng.integers(0, len(other_bounds) - 1))
                # Whole sentences from `first` until B reaches its target length.
                enough = np.searchsorted(other_bounds, other_bounds[first] + target_b, "left")
                last = min(max(int(enough), first + 1), len(other_bounds) - 1)
                b_start, b_stop = int(other_bounds[first]), int(other_bounds[last])
                i = a_end - 1  # Put back the sentences of the chunk that B did not use.
            else:
                b_start, b_stop = a_stop, int(bounds[i + 1])
            cut_a, cut_b = truncation_counts(a_stop - a_start, b_stop - b_start, max_num_tokens)
            a_start, a_stop = _trim(a_start, a_stop, cut_a, rng)
            b_start, b_stop = _trim(b_start, b_stop, cut_b, rng)
            instances.append((a_start, a_stop, b_start, b_stop, is_random_next))
            chunk_start = i + 1
        i += 1
    return instances


def unit_instances(
    documents_ids: Sequence[Sequence[np.ndarray]],
    *,
    rng: np.random.Generator,
    max_seq_length: int,
    short_seq_prob: float,
    random_next_prob: float,
    dupe_factor: int,
) -> list[Instance]:
    """The NSP instances of one unit's tokenized documents, `dupe_factor` passes, shuffled.

    Args:
      documents_ids: documents, each a list of int32 sentence arrays (`tokenize_documents`).
      rng: all randomness of the unit (the builder seeds it with (seed, unit index)).
      max_seq_length: tokens per sequence including [CLS] and two [SEP]s (>= 5).
      short_seq_prob: probability of a random shorter target length for a document.
      random_next_prob: probability that B comes from another document.
      dupe_factor: passes over the unit; each pass draws new split points and partners.
    """
    if max_seq_length < 5:
        raise ConfigError(f"max_seq_length={max_seq_length} leaves no room for A and B (need >= 5)")
    if dupe_factor < 1:
        raise ConfigError(f"dupe_factor={dupe_factor} must be at least 1")
    docs = [[s for s in doc if len(s)] for doc in documents_ids]
    docs = [doc for doc in docs if doc]
    if not docs:
        return []
    # Flatten the unit; sentence_bounds[d][k] is where sentence k of document d starts.
    lengths = [np.array([len(s) for s in doc]) for doc in docs]
    doc_starts = np.cumsum([0] + [int(n.sum()) for n in lengths])
    sentence_bounds = [
        start + np.concatenate([[0], np.cumsum(n)]) for start, n in zip(doc_starts, lengths)
    ]
    tokens = np.concatenate([s for doc in docs for s in doc]).astype(np.int32)
    spans = []
    for _ in range(dupe_factor):
        for doc in range(len(docs)):
            spans += _document_instances(
                doc, sentence_bounds, rng, max_seq_length - 3, short_seq_prob, random_next_prob
            )
    order = rng.permutation(len(spans))
    return [
        (tokens[a0:a1].copy(), tokens[b0:b1].copy(), bool(random_next))
        for a0, a1, b0, b1, random_next in (spans[i] for i in order)
    ]
