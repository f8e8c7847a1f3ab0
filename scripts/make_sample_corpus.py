"""Build the small public-domain sample corpus in BERT pretraining text format.

The corpus is made from two dictd databases shipped by Debian, both in the public
domain:

* ``dict-jargon`` -- The Jargon File 4.4.7 (The Jargon Lexicon section).
* ``dict-devil``  -- Ambrose Bierce, *The Devil's Dictionary* (1911 edition).

Usage (see ``data/sample/README.md`` for the full, exact regeneration recipe)::

    tmp=$(mktemp -d) && cd "$tmp"
    apt-get download dict-jargon dict-devil
    for deb in dict-jargon_*.deb dict-devil_*.deb; do dpkg -x "$deb" x; done
    cd /path/to/repo
    python scripts/make_sample_corpus.py --output-dir data/sample \\
        "$tmp/x/usr/share/dictd/jargon.dict.dz" "$tmp/x/usr/share/dictd/devil.dict.dz"

Inputs are the extracted ``*.dict.dz`` files (the ``.deb`` files themselves are not
accepted).  Each must have its dictd index next to it with the same stem
(``jargon.dict.dz`` -> ``jargon.index``).  ``.dict.dz`` is dictzip, which is
gzip-compatible, so only the standard library is needed.

What the script does:

1. Reads every entry through the index (entries that several headwords point to are
   read once) and drops the ``00-database-*`` metadata entries.
2. Turns each entry into one document.  The headword (as printed in the entry) is
   prefixed to the first sentence (``headword: definition ...``); the
   pronunciation/part-of-speech line, sense numbers and attribution lines are
   removed; dictd markup is stripped (``{cross reference}`` -> ``cross reference``,
   ``_italics_`` -> ``italics``); paragraphs that are mostly not letters (ASCII art,
   code) are dropped; whitespace is collapsed.
3. Splits each paragraph into sentences with a rule-based splitter: a boundary is
   ``.``, ``!`` or ``?`` (plus any closing quotes/brackets) followed by whitespace
   and an upper-case letter, an opening quote/bracket or a digit -- except after
   common abbreviations (``e.g.``, ``i.e.``, ``Mr.``, ``Dr.``, ``etc.``, ``vs.``,
   ...), single-letter initials (``J.``, ``S.J.``), bare enumerators (``2.``) and
   bracketed tags (``[obs.]``).  Paragraph breaks always end a sentence.
4. Drops sentences shorter than 3 characters and keeps only documents with at least
   2 sentences (next-sentence prediction needs sentence pairs).
5. Sorts documents by (source, index headword, offset) and sends every
   ``--eval-every``-th document (default 20, i.e. ~5%) to ``eval.txt``, the rest to
   ``train.txt``.

Output is BERT pretraining text format: UTF-8, one sentence per line, one blank line
between documents, no trailing whitespace.  The output is a pure function of the
input files, so re-running produces byte-identical files.  The script prints
document/sentence/word/byte counts and fails if the total exceeds ``--max-bytes``.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from dataclasses import dataclass
from pathlib import Path

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}

# Part-of-speech tags used by the Jargon File at the start of a numbered sense.
_JARGON_POS = r"(?:n|v|vt|vi|adj|adv|interj|excl|pl\.n|prov|imp|pref|suff|abbrev|quant|obs|cav)\."
_JARGON_SENSE = re.compile(
    r"^\d{1,2}\.\s+(?P<tag>\[[^\]]*\]\s+)?(?:" + _JARGON_POS + r",?\s*)*",
)
_BULLET = re.compile(r"^[□•*]\s+")
_TAG_ONLY = re.compile(r"^\[[^\]]*\]$")

# Devil's Dictionary entries start "HEADWORD, pos.  Definition ..." (a few omit the
# comma or the part of speech: "IMPOSTOR n.", "HABEAS CORPUS.", "CUI BONO?").  The
# headword is upper case apart from "or" ("BABE or BABY"); entries such as "I is the
# first letter ..." have no separate headword and are kept as they are.
_DEVIL_UPPER = r"[A-Z](?:[^a-z\n]|\bor\b)*?"
_DEVIL_HEAD = re.compile(
    r"^(?P<head>" + _DEVIL_UPPER + r")(?:,\s*|\s+)(?:[a-z]{1,5}\.)+(?=\s|$)\s*"
)
_DEVIL_BARE_HEAD = re.compile(r"^(?P<head>" + _DEVIL_UPPER + r"[.?!])(?: {2,}|[ \t]*\n|$)\s*")
# Right-aligned attributions ("G.J.", "Polydore Smith") are indented >= 42 columns;
# indented verse never is.
_ATTRIBUTION_INDENT = 42

# Lower-cased abbreviations (without the final period) after which we never split.
_ABBREVIATIONS = frozenset(
    """
    e.g i.e etc vs viz cf al esp approx ca
    mr mrs ms messrs dr prof rev hon st jr sr gen col capt lt sgt mt ft
    inc ltd co corp dept univ fig vol ed eds pp
    syn adj adv vt vi interj imper obs abbrev
    """.split()
)
_OPEN_PUNCT = "\"'“‘([{"
_CLOSE_PUNCT = "\"'”’)]}"
# Candidate boundary: terminal punctuation, optional closers, whitespace, then a
# sentence-starting character (checked further in _is_sentence_start).
_BOUNDARY = re.compile(r"[.!?]+[" + re.escape(_CLOSE_PUNCT) + r"]*(?=\s+(\S))")
_INITIALS = re.compile(r"^(?:[A-Za-z]\.)+$")
# A sentence may not consist of only an enumerator ("2.") or a tag ("[obs.]").
_FRAGMENT = re.compile(r"^(?:\(?\d{1,2}[.)]|\[[^\]]*\])$")

MIN_SENTENCE_CHARS = 3
MIN_DOC_SENTENCES = 2
MIN_ALPHA_RATIO = 0.75


@dataclass(frozen=True)
class Document:
    source: str
    headword: str  # as in the dictd index; used only for sorting
    offset: int
    sentences: tuple[str, ...]


def _b64_decode(s: str) -> int:
    value = 0
    for c in s:
        value = value * 64 + _B64_VALUE[c]
    return value


def read_entries(dict_path: Path) -> list[tuple[int, str, str]]:
    """Return ``(offset, index_headword, raw_text)`` for each distinct entry."""
    stem = dict_path.name.removesuffix(".dz").removesuffix(".dict")
    index_path = dict_path.with_name(stem + ".index")
    if not index_path.is_file():
        raise SystemExit(f"missing dictd index {index_path} next to {dict_path}")
    with gzip.open(dict_path, "rb") as f:
        data = f.read()
    spans: dict[tuple[int, int], str] = {}
    for line in index_path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        headword, off, length = line.split("\t")[:3]
        span = (_b64_decode(off), _b64_decode(length))
        spans.setdefault(span, headword)
    entries = []
    for (off, length), headword in sorted(spans.items()):
        if re.match(r"^00-?database", headword):
            continue
        entries.append((off, headword, data[off : off + length].decode("utf-8", "replace")))
    return entries


def clean_text(text: str, italics: bool = False) -> str:
    """Strip dictd markup from one paragraph and collapse whitespace."""
    text = re.sub(r"\s+", " ", text).strip()
    previous = None
    while previous != text:  # {cross ref} -> cross ref (the Jargon File nests a few)
        previous, text = text, re.sub(r"\{\s*([^{}\s][^{}]*?)\s*\}", r"\1", text)
    if italics:  # _italics_ -> italics (Devil's Dictionary only)
        text = re.sub(r"(?<!\w)_([^_]+?)_(?!\w)", r"\1", text)
    # Line wrapping in the sources leaves spaces inside quotes and before punctuation.
    text = re.sub(r"([“‘]) (?=\S)", r"\1", text)
    text = re.sub(r" (?=[”,;:)])", "", text)
    text = re.sub(r" (?=[.!?](?:\s|$))", "", text)
    return text.strip()


def _mostly_letters(text: str) -> bool:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return False
    return sum(c.isalpha() for c in chars) / len(chars) >= MIN_ALPHA_RATIO


def _is_sentence_start(c: str) -> bool:
    return c.isupper() or c.isdigit() or c in _OPEN_PUNCT


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter for already whitespace-collapsed text."""
    sentences = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if not _is_sentence_start(m.group(1)[0]):
            continue
        end = m.end()
        if text[m.start()] == "." and m.start() + 1 == end:
            # A lone period: check the word it ends for abbreviations and initials.
            word_start = text.rfind(" ", start, m.start()) + 1
            word = text[word_start:end].lstrip(_OPEN_PUNCT)
            bare = word[:-1].lower()
            if bare in _ABBREVIATIONS or _INITIALS.match(word):
                continue
        if _FRAGMENT.match(text[start:end].strip()):
            continue
        sentences.append(text[start:end].strip())
        start = end
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _paragraphs(lines: list[str]) -> list[str]:
    paras, current = [], []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            paras.append("\n".join(current))
            current = []
    if current:
        paras.append("\n".join(current))
    return paras


def jargon_paragraphs(raw: str) -> tuple[str, list[str]]:
    """Jargon entries: headword line, pronunciation/POS line, indented body."""
    lines = raw.split("\n")
    headword = lines[0].strip()
    out: list[str] = []
    pending_tag = ""
    for para in _paragraphs(lines[2:]):
        if not _mostly_letters(para):
            continue  # ASCII art, code, tables
        text = clean_text(para)
        text = _BULLET.sub("", text)
        text = _JARGON_SENSE.sub(lambda m: m.group("tag") or "", text)
        if _TAG_ONLY.match(text):  # e.g. "[very common]" before numbered senses
            pending_tag = f"{pending_tag}{text} "
            continue
        if text:
            out.append(pending_tag + text)
            pending_tag = ""
    return headword, out


def devil_paragraphs(raw: str) -> tuple[str, list[str]]:
    """Devil's Dictionary entries: ``HEADWORD, pos.  Definition`` plus verse."""
    headword = ""
    m = _DEVIL_HEAD.match(raw) or _DEVIL_BARE_HEAD.match(raw)
    if m:
        headword = m.group("head").strip()
        if re.search(r"[A-Z]{2}\.$", headword):  # "HABEAS CORPUS." but not "R.I.P."
            headword = headword[:-1]
        raw = raw[m.end() :]
    lines = [
        line
        for line in raw.split("\n")
        if len(line) - len(line.lstrip(" ")) < _ATTRIBUTION_INDENT or not line.strip()
    ]
    out = []
    for para in _paragraphs(lines):
        if not _mostly_letters(para):
            continue
        text = clean_text(para, italics=True)
        if text:
            out.append(text)
    return headword, out


def build_documents(dict_path: Path) -> list[Document]:
    source = dict_path.name.split(".")[0]
    parse = devil_paragraphs if source == "devil" else jargon_paragraphs
    docs = []
    for offset, index_headword, raw in read_entries(dict_path):
        headword, paragraphs = parse(raw)
        if headword and paragraphs:
            sep = " " if headword[-1] in "?!" else ": "
            paragraphs[0] = f"{headword}{sep}{paragraphs[0]}"
        sentences = tuple(
            s for para in paragraphs for s in split_sentences(para) if len(s) >= MIN_SENTENCE_CHARS
        )
        if len(sentences) >= MIN_DOC_SENTENCES:
            docs.append(Document(source, index_headword, offset, sentences))
    return docs


def render(docs: list[Document]) -> str:
    if not docs:
        return ""
    return "\n\n".join("\n".join(d.sentences) for d in docs) + "\n"


def stats(docs: list[Document], text: str) -> dict[str, int]:
    return {
        "documents": len(docs),
        "sentences": sum(len(d.sentences) for d in docs),
        "words": sum(len(s.split()) for d in docs for s in d.sentences),
        "bytes": len(text.encode("utf-8")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dicts", nargs="+", type=Path, help="extracted *.dict.dz files")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument(
        "--eval-every", type=int, default=20, help="every N-th document goes to eval.txt"
    )
    parser.add_argument("--max-bytes", type=int, default=5_000_000)
    args = parser.parse_args(argv)

    docs = [d for path in args.dicts for d in build_documents(path)]
    docs.sort(key=lambda d: (d.source, d.headword.casefold(), d.headword, d.offset))
    train = [d for i, d in enumerate(docs) if i % args.eval_every != args.eval_every - 1]
    evals = [d for i, d in enumerate(docs) if i % args.eval_every == args.eval_every - 1]

    args.output_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, split in (("train.txt", train), ("eval.txt", evals)):
        text = render(split)
        (args.output_dir / name).write_bytes(text.encode("utf-8"))
        s = stats(split, text)
        total += s["bytes"]
        print(
            f"{name}: {s['documents']} documents, {s['sentences']} sentences, "
            f"{s['words']} words, {s['bytes']} bytes"
        )
    print(f"total: {total} bytes")
    if total > args.max_bytes:
        print(f"error: corpus is larger than --max-bytes={args.max_bytes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
