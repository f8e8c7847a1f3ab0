"""Retrieval data: training pairs, BEIR eval folders, and their step-indexed batches.

* Pairs TSV (training), one example per line: `query<TAB>positive[<TAB>negative...]`; the
  first `num_negatives` negatives of each row are used (every row must have that many).
* A BEIR folder (evaluation), as the BEIR benchmark ships its datasets:
  `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and
  `qrels/<split>.tsv` (a header, then `query-id<TAB>corpus-id<TAB>score`). As BEIR's loader, the
  eval queries are those the split's qrels judge, and a document's text is `title text`.

Train batch features (B rows; Sq = max_query_length, S = max_seq_length, G = 1 + negatives):

    query_input_ids, query_input_mask [B, Sq] int32; doc_input_ids, doc_input_mask [B, G, S]
    int32 (the positive first); example_weight [B] float32

Eval batches are texts (the eval queries, then the corpus), `[CLS] text [SEP]`:
`input_ids`, `input_mask`, `segment_ids` [B, S] int32, `example_weight` [B]. Ordered by
`data_pipeline/order.py` as every other task's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from absl import logging

from data_pipeline.errors import ConfigError, DataError, MissingInputError
from data_pipeline.order import PaddedEvalBatches, ShuffledBatches, TokenBatcher
from data_pipeline.tasks import classification
from data_pipeline.tasks.examples import RawExamples


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Training rows as read: a query, its positive, and its hard negatives."""

    source: str
    queries: list[str]
    positives: list[str]
    negatives: list[list[str]]  # Per row, in file order (possibly none).
    lines: list[int]  # 1-based line of each row.

    def __len__(self) -> int:
        return len(self.queries)


def read_pairs(path: str) -> Pairs:
    """Reads `query<TAB>positive[<TAB>negative...]` lines; an empty cell is a DataError."""
    if not os.path.isfile(path):
        raise MissingInputError(f"pairs file {path!r} not found: check data.train_file.")
    out = Pairs(path, [], [], [], [])
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            rows = list(enumerate(f, start=1))
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; convert it (iconv -t UTF-8).") from None
    for number, raw in rows:
        row = raw.rstrip("\r\n")
        if not row.strip():
            continue
        fields = row.split("\t")
        if len(fields) < 2:
            raise DataError(
                f"{path}, line {number}: one column; expected query<TAB>positive[<TAB>negative...]."
            )
        empty = [i for i, x in enumerate(fields) if not x.strip()]
        if empty:
            side = {0: "query", 1: "positive"}.get(empty[0], f"negative {empty[0] - 1}")
            raise DataError(f"{path}, line {number}: the {side} is empty; every column needs text.")
        out.queries.append(fields[0])
        out.positives.append(fields[1])
        out.negatives.append(fields[2:])
        out.lines.append(number)
    if not out.queries:
        raise DataError(f"{path} holds no pairs: expected query<TAB>positive lines.")
    return out


@dataclasses.dataclass(frozen=True)
class BeirSet:
    """A BEIR split: the judged queries, the corpus, and the judgments."""

    source: str
    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}, as pytrec_eval takes.


def _jsonl(path: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        raise MissingInputError(
            f"{path} not found: a BEIR folder has corpus.jsonl, "
            "queries.jsonl and qrels/<split>.tsv."
        )
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{path}, line {number}: not UTF-8 JSON ({e}).") from None
            if not isinstance(row, dict) or any(k not in row for k in keys):
                raise DataError(f"{path}, line {number}: needs the keys {', '.join(keys)}.")
            rows.append(row)
    if not rows:
        raise DataError(f"{path} is empty.")
    return rows


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """`query-id<TAB>corpus-id<TAB>score` lines after a header (BEIR's layout)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"qrels file {path} not found: check data.eval_split.")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            try:
                query, doc, score = fields[0].strip(), fields[1].strip(), int(fields[2])
            except (IndexError, ValueError):
                if number == 1:
                    continue  # The header (BEIR's is query-id, corpus-id, score).
                raise DataError(
                    f"{path}, line {number}: expected query-id<TAB>corpus-id<TAB>integer score."
                ) from None
            qrels.setdefault(query, {})[doc] = score
    if not qrels:
        raise DataError(f"{path} holds no judgments.")
    return qrels


def read_beir(folder: str, split: str = "test") -> BeirSet:
    """Reads a BEIR folder; a qrels line naming a query or document the folder lacks is a
    DataError (a metric over it would silently count it as never retrieved)."""
    if not os.path.isdir(folder):
        raise MissingInputError(f"BEIR folder {folder!r} not found: check data.eval_file.")
    corpus = _jsonl(os.path.join(folder, "corpus.jsonl"), ("_id", "text"))
    queries = {
        str(q["_id"]): str(q["text"])
        for q in _jsonl(os.path.join(folder, "queries.jsonl"), ("_id", "text"))
    }
    qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
    qrels = read_qrels(qrels_path)
    doc_ids = [str(d["_id"]) for d in corpus]
    known = set(doc_ids)
    for query, judged in qrels.items():
        if query not in queries:
            raise DataError(f"{qrels_path}: query {query!r} is not in queries.jsonl.")
        missing = [d for d in judged if d not in known]
        if missing:
            raise DataError(
                f"{qrels_path}: query {query!r} judges document {missing[0]!r}, which is not in "
                "corpus.jsonl; fix the qrels or add the document."
            )
    docs = [f"{d.get('title') or ''} {d['text']}".strip() for d in corpus]
    query_ids = list(qrels)
    return BeirSet(folder, query_ids, [queries[q] for q in query_ids], doc_ids, docs, qrels)


def _tokenized(texts: list[str], tokenizer, max_seq_length: int, source: str):
    """Token ids of `texts`, each cut to fit `[CLS] text [SEP]` in `max_seq_length`."""
    raw = RawExamples(source, texts, None, [""] * len(texts), list(range(1, len(texts) + 1)))
    return classification.tokenize(raw, np.zeros(len(texts), np.int32), tokenizer, max_seq_length)


def _fill(ids: np.ndarray, mask: np.ndarray, pieces: np.ndarray, cls_id: int, sep_id: int):
    n = len(pieces) + 2
    ids[:n] = [cls_id, *pieces, sep_id]
    mask[:n] = 1


class _PairBatcher(TokenBatcher):
    def __init__(self, queries, docs, group: int, max_query_length: int, **kwargs: Any):
        super().__init__(len(queries), **kwargs)
        self.queries, self.docs, self.group = queries, docs, group  # Doc i*group+j: row i's j.
        self.max_query_length = max_query_length

    def _features(self, examples: np.ndarray, epochs: np.ndarray, valid: np.ndarray) -> dict:
        del epochs  # The same features every epoch.
        b, g, s = len(examples), self.group, self.max_seq_length
        batch = {
            "query_input_ids": np.zeros((b, self.max_query_length), np.int32),
            "query_input_mask": np.zeros((b, self.max_query_length), np.int32),
            "doc_input_ids": np.zeros((b, g, s), np.int32),
            "doc_input_mask": np.zeros((b, g, s), np.int32),
            "example_weight": valid.astype(np.float32),
        }
        for r in np.flatnonzero(valid):
            e = int(examples[r])
            _fill(
                batch["query_input_ids"][r],
                batch["query_input_mask"][r],
                self.queries.segments(e)[0],
                self.cls_id,
                self.sep_id,
            )
            for j in range(g):
                _fill(
                    batch["doc_input_ids"][r, j],
                    batch["doc_input_mask"][r, j],
                    self.docs.segments(e * g + j)[0],
                    self.cls_id,
                    self.sep_id,
                )
        return batch


class PairTrainBatches(ShuffledBatches, _PairBatcher):
    """Global train batch `step` of (query, positive, negatives), reshuffled every epoch."""


class _TextBatcher(TokenBatcher):
    def __init__(self, texts, **kwargs: Any):
        super().__init__(len(texts), **kwargs)
        self.texts = texts

    def _features(self, examples: np.ndarray, epochs: np.ndarray, valid: np.ndarray) -> dict:
        del epochs
        batch = {
            **self._inputs(len(examples), self.max_seq_length),
            "example_weight": valid.astype(np.float32),
        }
        for r in np.flatnonzero(valid):
            _fill(
                batch["input_ids"][r],
                batch["input_mask"][r],
                self.texts.segments(int(examples[r]))[0],
                self.cls_id,
                self.sep_id,
            )
        return batch


class TextEvalBatches(PaddedEvalBatches, _TextBatcher):
    """Texts in order, to embed; the last batch is padded with zero rows of weight 0."""


def train_batches(
    pairs: Pairs, tokenizer, data_config, *, num_negatives: int, seed: int, batch_size: int
) -> PairTrainBatches:
    """The train batches of `pairs` with `num_negatives` hard negatives per row (-1: as many as
    every row has)."""
    have = min(len(n) for n in pairs.negatives)
    if num_negatives < 0:
        num_negatives = have
        if max(len(n) for n in pairs.negatives) > have:
            logging.warning(
                "%s: rows have different numbers of negatives; each uses its first "
                "%d (set data.num_negatives to choose).",
                pairs.source,
                have,
            )
    elif num_negatives > have:
        i = next(i for i, n in enumerate(pairs.negatives) if len(n) < num_negatives)
        raise DataError(
            f"{pairs.source}, line {pairs.lines[i]}: {len(pairs.negatives[i])} negatives, but "
            f"data.num_negatives={num_negatives}; lower it or add negatives."
        )
    if data_config.max_query_length < 3:
        raise ConfigError(f"data.max_query_length={data_config.max_query_length}: use >= 3.")
    group = 1 + num_negatives
    docs = [d for p, n in zip(pairs.positives, pairs.negatives) for d in [p, *n[:num_negatives]]]
    return PairTrainBatches(
        _tokenized(pairs.queries, tokenizer, data_config.max_query_length, pairs.source),
        _tokenized(docs, tokenizer, data_config.max_seq_length, pairs.source),
        group,
        data_config.max_query_length,
        seed=seed,
        batch_size=batch_size,
        max_seq_length=data_config.max_seq_length,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        what="pairs",
    )


def text_batches(
    texts: list[str],
    tokenizer,
    data_config,
    batch_size: int,
    *,
    num_queries: int = 0,
    source: str = "",
) -> TextEvalBatches:
    """Eval batches of `texts`; the first `num_queries` are cut to `data.max_query_length`."""
    s = data_config.max_seq_length
    ids = _tokenized(texts[num_queries:], tokenizer, s, source)
    if num_queries:  # Queries are cut as in training, then padded to the passages' length.
        q = _tokenized(texts[:num_queries], tokenizer, data_config.max_query_length, source)
        ids = dataclasses.replace(
            ids,
            tokens_a=np.concatenate([q.tokens_a, ids.tokens_a]),
            offsets_a=np.concatenate([q.offsets_a[:-1], ids.offsets_a + q.offsets_a[-1]]),
            labels=np.zeros(len(texts), np.int32),
        )
    return TextEvalBatches(
        ids,
        batch_size=batch_size,
        max_seq_length=s,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        what="texts",
    )


def read_texts(path: str) -> list[str]:
    """Input of `pretrain.embed`: one text per line (empty lines kept as empty texts)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"input file {path!r} not found.")
    with open(path, encoding="utf-8") as f:
        texts = [line.rstrip("\r\n") for line in f]
    if not texts:
        raise DataError(f"{path} is empty: give one text per line.")
    return texts
