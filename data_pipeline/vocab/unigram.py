"""The sentencepiece unigram tokenizer: training, and loading with fixed special-token ids.

Layout of every model this project trains or accepts:

    [PAD]=0  [UNK]=1  [CLS]=2  [SEP]=3  [MASK]=4   (no BOS/EOS)

[CLS], [SEP] and [MASK] are control symbols: they never come out of `encode`, the pipeline
inserts them by id. Lower-casing lives in the model itself (normalization rule 'nmt_nfkc_cf',
NFKC plus case folding, instead of 'nmt_nfkc'), so whoever loads the .model gets the same text
normalization without a side flag.

`python -m data_pipeline.tokenizer` is the command line of `train_tokenizer`.
"""

import functools
import hashlib
import io
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2, sentencepiece_pb2

from data_pipeline import documents, files
from data_pipeline.errors import ConfigError, DataError, MissingInputError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # Indexed by id.
WORD_START = "\u2581"  # '▁': sentencepiece's mark for a piece that begins a word.
_LOWER_CASE_RULE, _CASED_RULE = "nmt_nfkc_cf", "nmt_nfkc"


def _sentences(
    input_globs: Sequence[str], text_feature: str, progress_every_mb: float, errors: list
) -> Iterator[str]:
    """Streams sentences from every input, printing progress to stderr every few MB.

    An input error ends the stream and is handed back through `errors` for the caller to raise
    (the stream is consumed inside a sampler that should not have to know about it).
    """
    read_bytes, lines, next_report = 0, 0, progress_every_mb
    try:
        for spec in input_globs:
            for document in documents.iter_documents(spec, text_feature=text_feature):
                for sentence in document:
                    read_bytes += len(sentence.encode("utf-8")) + 1
                    lines += 1
                    yield sentence
                if read_bytes / 2**20 >= next_report:
                    mb = read_bytes / 2**20
                    print(f"tokenizer: read {mb:.1f} MB, {lines} lines", file=sys.stderr)
                    next_report += progress_every_mb
    except (DataError, OSError) as e:
        errors.append(e)
        return
    print(f"tokenizer: read {read_bytes / 2**20:.1f} MB, {lines} lines in all", file=sys.stderr)


def reservoir_sample(items: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform random sample of at most `k` items, the same for the same (items, seed).

    Reservoir sampling with geometric skips (Li's "Algorithm L"): O(k log(n/k)) random draws,
    so a corpus of billions of sentences costs little more than reading it. sentencepiece's own
    sampler ignores its seed, which would give every host a different tokenizer.
    """
    rng = np.random.default_rng(seed)
    it = iter(items)
    reservoir = [x for _, x in zip(range(k), it, strict=False)]
    if len(reservoir) < k:
        return reservoir
    draw = lambda: 1.0 - rng.random()  # In (0, 1]: its log is finite.
    w = np.exp(np.log(draw()) / k)
    while True:
        skip = int(np.log(draw()) / np.log1p(-w)) if w < 1.0 else 0
        for _ in range(skip):
            if next(it, None) is None:
                return reservoir
        item = next(it, None)
        if item is None:
            return reservoir
        reservoir[rng.integers(k)] = item
        w *= np.exp(np.log(draw()) / k)


def train_tokenizer(
    input_globs: Sequence[str],
    vocab_size: int,
    output_prefix: str,
    lower_case: bool = True,
    *,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 5_000_000,
    text_feature: str = "text",
    progress_every_mb: float = 64.0,
    num_threads: int | None = None,
    seed: int = 0,
) -> str:
    """Trains a unigram sentencepiece model on the inputs; returns the path of PREFIX.model.

    Args:
      input_globs: specs as `documents.iter_documents` takes them (globs of BERT text files, or
        'tfds:NAME[:SPLIT]'); every sentence of every spec is streamed to the trainer.
      vocab_size: pieces in the model, the 5 special tokens included.
      output_prefix: writes PREFIX.model and PREFIX.vocab (parent folders are created).
      lower_case: fold case inside the model's normalizer (uncased BERT).
      character_coverage: fraction of characters the pieces must cover; rarer ones become [UNK].
      input_sentence_size: the trainer keeps a uniform random sample of at most this many
        sentences (all input is still read once); bounds memory and time on huge corpora.
      text_feature: the text field of a TFDS source.
      progress_every_mb: a progress line goes to stderr every this many MB read.
      num_threads: trainer threads (default: all CPUs).
      seed: seeds the trainer's sentence sampling, so the same inputs give the same model on
        every run and every host.
    """
    if vocab_size <= len(SPECIAL_PIECES):
        raise ConfigError(f"vocab_size={vocab_size} is too small: it must exceed the 5 specials")
    if isinstance(input_globs, str):  # One spec, not a sequence of one-letter globs.
        input_globs = [input_globs]
    if not input_globs:
        raise ConfigError("no tokenizer input given: pass globs of text files")
    for spec in input_globs:  # Fail fast on a typo, before reading anything.
        if not documents.is_tfds_spec(spec):
            documents.resolve_files(spec)
    model, errors = io.BytesIO(), []
    sentences = _sentences(input_globs, text_feature, progress_every_mb, errors)
    sample = reservoir_sample(sentences, input_sentence_size, seed)
    if errors:
        raise errors[0]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            input_sentence_size=0,  # The sample above is the whole input.
            max_sentence_length=16384,  # Bytes; BERT-format lines can be long paragraphs.
            normalization_rule_name=_LOWER_CASE_RULE if lower_case else _CASED_RULE,
            pad_id=PAD_ID,
            pad_piece="[PAD]",
            unk_id=UNK_ID,
            unk_piece="[UNK]",
            bos_id=-1,
            eos_id=-1,
            control_symbols=list(SPECIAL_PIECES[CLS_ID:]),  # Take the next free ids: 2, 3, 4.
            byte_fallback=False,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _training_error(str(e), vocab_size) from e

    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    model_path = output_prefix + ".model"
    files.write_bytes(model_path, model.getvalue())
    tokenizer = SentencePieceTokenizer(model_path)  # Validates the special-token layout.
    vocab = "".join(
        f"{tokenizer.id_to_piece(i)}\t{tokenizer.score(i):g}\n" for i in range(tokenizer.vocab_size)
    )
    files.write_text(output_prefix + ".vocab", vocab)
    return model_path


def _training_error(message: str, vocab_size: int) -> DataError:
    """sentencepiece's failure message as a user error naming the fix."""
    if (limit := re.search(r"value <= (\d+)", message)) is not None:
        return DataError(
            f"vocab_size={vocab_size} is too large for this text: it supports at most "
            f"{limit.group(1)} pieces; lower --vocab_size or add text"
        )
    if (need := re.search(r"required_chars\. \d+ vs (\d+)", message)) is not None:
        return DataError(
            f"vocab_size={vocab_size} is too small: covering the text's characters needs at "
            f"least {need.group(1)} pieces; raise --vocab_size or lower --character_coverage"
        )
    return DataError(f"sentencepiece training failed: {message}")


def _char_index_of_bytes(text: str) -> list[int]:
    """For each UTF-8 byte offset of `text` (and its end), the character offset it falls in."""
    char_at = []
    for i, ch in enumerate(text):
        char_at.extend([i] * len(ch.encode("utf-8")))
    char_at.append(len(text))
    return char_at


class SentencePieceTokenizer:
    """A sentencepiece model with BERT's special tokens at fixed ids (see the module docstring)."""

    pad_id, unk_id, cls_id, sep_id, mask_id = PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID
    special_ids = frozenset(range(len(SPECIAL_PIECES)))

    def __init__(self, model_path: str):
        if not os.path.isfile(model_path):
            raise MissingInputError(
                f"tokenizer model {model_path!r} not found: train one with "
                "`python -m data_pipeline.tokenizer` or fix data.tokenizer_model"
            )
        with open(model_path, "rb") as f:
            proto = f.read()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load_from_serialized_proto(proto)
        except RuntimeError as e:
            raise DataError(f"{model_path!r} is not a sentencepiece model ({e})") from None
        pieces = tuple(self._sp.id_to_piece(i) for i in range(min(5, self._sp.get_piece_size())))
        if pieces != SPECIAL_PIECES or self._sp.get_piece_size() <= len(SPECIAL_PIECES):
            raise DataError(
                f"tokenizer {model_path!r} has {pieces} at ids 0-4, but BERT needs "
                f"{SPECIAL_PIECES}: train it with `python -m data_pipeline.tokenizer`"
            )
        spec = sentencepiece_model_pb2.ModelProto.FromString(proto).normalizer_spec
        self.model_path = model_path
        self.lower_case = spec.name == _LOWER_CASE_RULE
        self.fingerprint = hashlib.sha256(proto).hexdigest()  # Keys caches built with it.

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @functools.cached_property
    def is_word_start(self) -> np.ndarray:
        """[vocab] bool: the piece begins a word (whole-word masking groups the rest with it)."""
        starts = np.array(
            [self._sp.id_to_piece(i).startswith(WORD_START) for i in range(self.vocab_size)]
        )
        starts[list(self.special_ids)] = False
        return starts

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (normalized, and lower-cased if the model was trained so)."""
        return self._sp.encode(text)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and, per id, the (start, end) characters of `text` it covers, without
        the whitespace a word-start piece stands for."""
        # The serialized proto is the one form every sentencepiece release returns alike
        # (0.2.2 dropped "immutable_proto"); its offsets count UTF-8 bytes, not characters.
        proto = sentencepiece_pb2.SentencePieceText.FromString(
            self._sp.EncodeAsSerializedProto(text)
        )
        char_at = _char_index_of_bytes(text)
        ids, spans = [], []
        for piece in proto.pieces:
            start, end = char_at[piece.begin], char_at[piece.end]
            while start < end and text[start].isspace():
                start += 1
            ids.append(piece.id)
            spans.append((start, end))
        return ids, spans

    def encode_batch(self, texts: Iterable[str], num_threads: int = -1) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel (-1: all CPUs)."""
        return self._sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; control tokens ([CLS], [SEP], [MASK], [PAD]) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)

    def score(self, token_id: int) -> float:
        """Log-probability of the piece in the unigram model (0 for special tokens)."""
        return self._sp.get_score(int(token_id))
