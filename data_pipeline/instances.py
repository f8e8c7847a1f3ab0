"""Builds next-sentence-prediction instances from tokenized documents, once, into a store.

The recipe is google-research/bert `create_pretraining_data.py` (`create_instances_from_document`):
per document, a target length (max_seq_length - 3, or with probability short_seq_prob a random
shorter one); sentences accumulate into a chunk until it reaches the target; the chunk splits at a
random sentence boundary into A and B; with probability random_next_prob (always when the chunk
is one sentence) B is instead drawn from another document and the unused sentences are put back;
the pair is truncated to max_seq_length - 3 by trimming the longer segment at a random end.

Masking is not done here: it is dynamic, per (seed, example index, epoch), in `masking.py`.

Every segment is a contiguous run of its document's tokens (truncation only trims the ends), so
the store keeps the corpus tokens once, flat, and four offsets per instance:

    tokens          int32 [T]     every document's tokens, concatenated
    spans           int64 [N, 4]  a_start, a_stop, b_start, b_stop into `tokens`
    is_random_next  bool  [N]     B was drawn from another document (NSP label 1)
"""

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from data_pipeline.errors import ConfigError, DataError

# Increase when the building recipe changes, so caches keyed on it are rebuilt.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class InstanceStore:
    """Random-access NSP instances; `store[i] -> (tokens_a, tokens_b, is_random_next)`."""

    tokens: np.ndarray  # int32 [T]
    spans: np.ndarray  # int64 [N, 4]
    is_random_next: np.ndarray  # bool [N]
    max_seq_length: int  # The length the instances were truncated for (A + B + 3 <= this).

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, bool]:
        a_start, a_stop, b_start, b_stop = self.spans[i]
        return (
            self.tokens[a_start:a_stop],
            self.tokens[b_start:b_stop],
            bool(self.is_random_next[i]),
        )

    def save(self, f) -> None:
        """Writes the store to the binary file object `f` (.npz)."""
        np.savez(
            f,
            tokens=self.tokens,
            spans=self.spans,
            is_random_next=self.is_random_next,
            max_seq_length=np.int64(self.max_seq_length),
            format_version=np.int64(FORMAT_VERSION),
        )

    @classmethod
    def load(cls, path: str) -> "InstanceStore":
        """Reads a store written by `save`; ValueError if the file is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            version = int(arrays["format_version"])
            store = cls(
                tokens=arrays["tokens"],
                spans=arrays["spans"],
                is_random_next=arrays["is_random_next"],
                max_seq_length=int(arrays["max_seq_length"]),
            )
        except (OSError, KeyError, EOFError, ValueError) as e:
            raise ValueError(f"{path!r} is not an instance store ({e})") from None
        if version != FORMAT_VERSION:
            raise ValueError(f"{path!r} has format {version}, this code reads {FORMAT_VERSION}")
        return store


def tokenize_documents(
    documents: Iterable[Sequence[str]], tokenizer, batch_sentences: int = 65536
) -> list[list[np.ndarray]]:
    """Encodes every sentence once: documents of int32 sentence arrays, empty ones dropped.

    `tokenizer` is a `data_pipeline.vocab.Tokenizer` (anything with `encode_batch`). Sentences
    are encoded in parallel batches and packed into int32 at once, so memory stays near the size
    of the token arrays rather than of Python lists of ints.
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


def build_instance_store(
    documents_ids: Sequence[Sequence[Sequence[int]]],
    *,
    seed: int,
    max_seq_length: int,
    short_seq_prob: float,
    random_next_prob: float,
    dupe_factor: int,
) -> InstanceStore:
    """Builds the NSP instances of every document, `dupe_factor` times, in a shuffled store.

    Args:
      documents_ids: documents, each a list of sentences, each a sequence of token ids.
        Empty sentences and documents without tokens are skipped.
      seed: all randomness comes from `np.random.default_rng(seed)`.
      max_seq_length: tokens per sequence including [CLS] and two [SEP]s (>= 5).
      short_seq_prob: probability of a random shorter target length for a document.
      random_next_prob: probability that B comes from another document.
      dupe_factor: passes over the corpus; each pass draws new split points and partners.
    """
    if max_seq_length < 5:
        raise ConfigError(f"max_seq_length={max_seq_length} leaves no room for A and B (need >= 5)")
    if dupe_factor < 1:
        raise ConfigError(f"dupe_factor={dupe_factor} must be at least 1")
    sentences = [[np.asarray(s, np.int32) for s in doc if len(s)] for doc in documents_ids]
    sentences = [doc for doc in sentences if doc]
    if len(sentences) < 2:
        raise DataError(
            f"NSP needs at least 2 documents with text, got {len(sentences)}: add documents "
            "(separated by a blank line) to the input"
        )
    # Flatten the corpus; sentence_bounds[d][k] is where sentence k of document d starts.
    lengths = [np.array([len(s) for s in doc]) for doc in sentences]
    doc_starts = np.cumsum([0] + [int(n.sum()) for n in lengths])
    sentence_bounds = [
        start + np.concatenate([[0], np.cumsum(n)]) for start, n in zip(doc_starts, lengths)
    ]
    tokens = np.concatenate([s for doc in sentences for s in doc])

    rng = np.random.default_rng(seed)
    instances = []
    for _ in range(dupe_factor):
        for doc in range(len(sentences)):
            instances += _document_instances(
                doc, sentence_bounds, rng, max_seq_length - 3, short_seq_prob, random_next_prob
            )
    order = rng.permutation(len(instances))  # Like BERT; a capped eval then sees all documents.
    table = np.array(instances, np.int64)[order]  # [N, 5]
    return InstanceStore(
        tokens=tokens,
        spans=table[:, :4].copy(),
        is_random_next=table[:, 4].astype(bool),
        max_seq_length=max_seq_length,
    )
