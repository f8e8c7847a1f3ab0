"""Packed MLM-only rows of one unit: documents concatenated and cut into full rows.

Each document becomes `[CLS] tokens [SEP]` (the [CLS] lets a row start look like a fine-tuning
input, whose [CLS] the classifiers pool), the documents of the unit are concatenated in order and
cut into rows of `max_seq_length`; a document longer than a row continues in the next one. Each
row records the lengths of its segments (the pieces of documents it holds), from which the model
gets per-document attention (no attention across a boundary) and positions that restart at each
piece. Only the last row of a unit is padded: there is no padding elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PackedRow = tuple[np.ndarray, np.ndarray]  # (tokens int32 [n <= S], segment lengths int32 [k])


def pack_documents(
    documents_ids: Sequence[Sequence[np.ndarray]], *, max_seq_length: int, cls_id: int, sep_id: int
) -> list[PackedRow]:
    """The packed rows of one unit's tokenized documents (lists of int32 sentence arrays)."""
    pieces = [
        np.concatenate([[cls_id], *doc, [sep_id]]).astype(np.int32) for doc in documents_ids if doc
    ]
    if not pieces:
        return []
    stream = np.concatenate(pieces)
    ends = np.cumsum([len(p) for p in pieces])  # Document boundaries in the stream.
    rows = []
    for start in range(0, len(stream), max_seq_length):
        stop = min(start + max_seq_length, len(stream))
        inside = ends[(ends > start) & (ends < stop)]
        cuts = np.concatenate([[start], inside, [stop]])
        rows.append((stream[start:stop].copy(), np.diff(cuts).astype(np.int32)))
    return rows
