"""Build an English pretraining corpus from GCIDE (Debian `dict-gcide`), text the sample corpus
does not contain, in BERT pretraining text format.

GCIDE, the GNU Collaborative International Dictionary of English, is Webster's Revised
Unabridged Dictionary (1913) with later additions, under the GPL (version 3 or later; see the
package's copyright file). Nothing is committed: the script builds the corpus where it is needed.

    tmp=$(mktemp -d) && (cd "$tmp" && apt-get download dict-gcide && dpkg -x dict-gcide_*.deb x)
    python scripts/make_reference_corpus.py "$tmp/x/usr/share/dictd/gcide.dict.dz" \
        --output_dir=/tmp/gcide --train_words=1500000

Each dictionary entry becomes one document: `headword: definition`, its senses and notes as
sentences. Pronunciations, etymologies and every bracketed tag (`[Obs.]`, `[1913 Webster]`)
are removed, GCIDE's character markup (`[a^]`, `[ae]`, `[imac]`) becomes plain letters, and
paragraphs GCIDE took from WordNet (`[WordNet 1.5]`) are dropped, so that a task built from
WordNet glosses (scripts/make_wordnet_task.py) is text the pretraining never saw. Documents
are taken at an even stride through the alphabet until `--train_words` (and
`--eval_words`, from documents the training split does not hold) are reached. The output is a
pure function of the input file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sample_corpus as dictd  # noqa: E402 - the dictd reader and sentence splitter.

# GCIDE's named characters; any other [x^] / [=x] / ['x] ... accent markup keeps its letters.
_NAMED = {
    "imac": "i", "aum": "a", "asl": "a", "add": "a", "udd": "u", "eth": "th", "thorn": "th",
    "yogh": "y", "dsdot": "d", "ng": "ng", "ae": "ae", "AE": "Ae", "oe": "oe", "OE": "Oe",
    "deg": " degrees", "sect": "section", "pounds": "pounds", "root": "", "th": "th",
}  # fmt: skip
_ACCENT = re.compile(r"\[([=.^~'`\"\-*,]?)([A-Za-z]{1,2})([\^]?)\](?=\w|\b)")
_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_SENSE_NUMBER = re.compile(r"^(?:\d{1,2}\.\s+|\([a-z]\)\s+)+")
_HEADER = re.compile(
    r"^(?P<head>[^\\\n]+?)\s*\\[^\\]*\\\s*(?:\([^)]*\))?"  # headword \pron\ (respelling)
    r"[^A-Z{]*?"  # part of speech, plural and inflected forms
    r"(?=[A-Z{(]|$)",
    re.DOTALL,
)


def plain_characters(text: str) -> str:
    """GCIDE character markup -> plain ASCII letters."""
    for name, value in _NAMED.items():
        text = text.replace(f"[{name}]", value)

    def accent(m: re.Match) -> str:
        return m.group(2) if (m.group(1) or m.group(3)) else m.group(0)

    return _ACCENT.sub(accent, text)


def entry_paragraphs(raw: str) -> tuple[str, list[str]]:
    """(headword, cleaned paragraphs) of one GCIDE entry."""
    paragraphs = dictd._paragraphs(raw.split("\n"))
    headword, out = "", []
    for i, para in enumerate(paragraphs):
        if "[WordNet" in para or "WordNet 1.5" in para:
            continue  # Kept out so that WordNet-based tasks are unseen text.
        text, previous = plain_characters(para), None
        while previous != text:  # Nested brackets: innermost first.
            previous, text = text, _BRACKETS.sub(" ", text)
        if i == 0:
            m = _HEADER.match(text)
            if not m:
                return "", []
            headword, text = m.group("head").strip(), text[m.end() :]
        text = _PRONUNCIATION.sub(" ", text).replace("Note:", " ")
        text = dictd.clean_text(text)
        text = _SENSE_NUMBER.sub("", text).strip(" ;,")
        if text and dictd._mostly_letters(text):
            out.append(text)
    return headword, out


def build_documents(dict_path: Path) -> list[tuple[str, ...]]:
    docs = []
    for _, _, raw in dictd.read_entries(dict_path):
        headword, paragraphs = entry_paragraphs(raw)
        if not headword or not paragraphs:
            continue
        paragraphs[0] = f"{headword}: {paragraphs[0]}"
        sentences = tuple(
            s
            for para in paragraphs
            for s in dictd.split_sentences(para)
            if len(s) >= dictd.MIN_SENTENCE_CHARS
        )
        if len(sentences) >= dictd.MIN_DOC_SENTENCES:
            docs.append(sentences)
    return docs


def take_words(docs: list[tuple[str, ...]], words: int) -> list[tuple[str, ...]]:
    """Documents at an even stride through `docs` until about `words` words."""
    total = sum(len(s.split()) for d in docs for s in d)
    stride = max(total / max(words, 1), 1.0)
    picked, count, position = [], 0, 0.0
    while count < words and int(position) < len(docs):
        doc = docs[int(position)]
        picked.append(doc)
        count += sum(len(s.split()) for s in doc)
        position += stride
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gcide", type=Path, help="extracted gcide.dict.dz (gcide.index beside it)")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--train_words", type=int, default=1_500_000)
    parser.add_argument("--eval_words", type=int, default=60_000)
    args = parser.parse_args(argv)

    docs = build_documents(args.gcide)
    evals = take_words(docs[1::2], args.eval_words)  # Odd documents: never in train.
    held_out = {id(d) for d in evals}
    train = take_words([d for d in docs if id(d) not in held_out], args.train_words)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, split in (("train.txt", train), ("eval.txt", evals)):
        text = "\n\n".join("\n".join(d) for d in split) + "\n"
        (args.output_dir / name).write_text(text, encoding="utf-8")
        words = sum(len(s.split()) for d in split for s in d)
        print(f"{name}: {len(split)} documents, {words} words, {len(text.encode())} bytes")
    print(f"(from {len(docs)} GCIDE entries with at least {dictd.MIN_DOC_SENTENCES} sentences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
