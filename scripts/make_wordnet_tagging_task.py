"""Build a tagging task in CoNLL layout from WordNet's glosses (Debian `wordnet-base`).

Every gloss (a synset's definition and its quoted examples, all parts of speech) becomes one
sentence, split into words and punctuation. Words and word sequences (up to 3 words, greedy
longest match, a plural 's' allowed) that are WordNet nouns whose most frequent sense belongs to
a chosen category (and that are not also verbs, adjectives or adverbs) are tagged as entities of
that type in IOB2: PERSON (noun.person), LOCATION (noun.location), TIME (noun.time), ANIMAL
(noun.animal), PLANT (noun.plant), FOOD (noun.food); every other word is O. Knowing which
words name people, places, animals or food is lexical knowledge a model can bring from
pretraining on dictionary text (GCIDE, with WordNet's own paragraphs removed:
scripts/make_reference_corpus.py) to words it never saw tagged.

    tmp=$(mktemp -d) && (cd "$tmp" && apt-get download wordnet-base && dpkg -x wordnet-base_*.deb x)
    python scripts/make_wordnet_tagging_task.py --wordnet_dir="$tmp/x/usr/share/wordnet" \
        --output_dir=/tmp/wordnet_tags --train_sentences=20000 --eval_sentences=2000

writes {train,eval}.conll (sentences shuffled with a fixed seed; eval disjoint from train).
WordNet 3.0 is under Princeton's WordNet licence (free use and redistribution with its notice).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re

CATEGORIES = {5: "ANIMAL", 13: "FOOD", 15: "LOCATION", 18: "PERSON", 20: "PLANT", 28: "TIME"}
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


def other_parts_of_speech(wordnet_dir: str) -> set[str]:
    """Lemmas that are also verbs, adjectives or adverbs ('leaves', 'white', 'down')."""
    out = set()
    for pos in ("verb", "adj", "adv"):
        with open(os.path.join(wordnet_dir, f"index.{pos}"), encoding="utf-8") as f:
            out.update(line.split()[0] for line in f if not line.startswith("  "))
    return out


def noun_categories(wordnet_dir: str) -> dict[tuple[str, ...], str]:
    """Lower-cased lemma words -> entity type, for nouns whose first sense is in CATEGORIES,
    that are not also another part of speech, and longer than 2 letters (not 'or' = Oregon)."""
    ambiguous = other_parts_of_speech(wordnet_dir)
    lex_file = {}
    with open(os.path.join(wordnet_dir, "data.noun"), encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("  "):
                parts = line.split()
                lex_file[parts[0]] = int(parts[1])
    out = {}
    with open(os.path.join(wordnet_dir, "index.noun"), encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):
                continue
            parts = line.split()
            pointers = int(parts[3])
            first_sense = parts[4 + pointers + 2]  # After synset_cnt, ptr list, sense/tagsense.
            category = CATEGORIES.get(lex_file.get(first_sense, -1))
            if category and parts[0] not in ambiguous and len(parts[0]) > 2:
                out[tuple(parts[0].split("_"))] = category
    return out


def glosses(wordnet_dir: str) -> list[str]:
    texts = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = os.path.join(wordnet_dir, f"data.{pos}")
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.startswith("  ") and " | " in line:
                    texts.append(" ".join(line.split(" | ", 1)[1].split()))
    return texts


def tag(words: list[str], lexicon: dict[tuple[str, ...], str]) -> list[str]:
    tags, i = ["O"] * len(words), 0
    lower = [w.lower() for w in words]
    while i < len(words):
        for n in (3, 2, 1):
            key = tuple(lower[i : i + n])
            if len(key) < n:
                continue
            kind = lexicon.get(key)
            if kind is None and key[-1].endswith("s") and len(key[-1]) > 4:
                kind = lexicon.get((*key[:-1], key[-1][:-1]))
            if kind:
                tags[i : i + n] = [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)
                i += n
                break
        else:
            i += 1
    return tags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wordnet_dir", required=True, help="usr/share/wordnet")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_sentences", type=int, default=20_000)
    parser.add_argument("--eval_sentences", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.wordnet_dir, "index.noun")):
        raise SystemExit(f"error: no index.noun in {args.wordnet_dir}: point at usr/share/wordnet")
    lexicon = noun_categories(args.wordnet_dir)
    texts = glosses(args.wordnet_dir)
    random.Random(args.seed).shuffle(texts)
    os.makedirs(args.output_dir, exist_ok=True)
    first_train = args.eval_sentences
    splits = {
        "eval": texts[:first_train],
        "train": texts[first_train : first_train + args.train_sentences],
    }
    for name, part in splits.items():
        counts: collections.Counter = collections.Counter()
        lines = []
        for text in part:
            words = _WORD.findall(text)
            tags = tag(words, lexicon)
            counts.update(t[2:] for t in tags if t.startswith("B-"))
            lines += [f"{w} {t}" for w, t in zip(words, tags)] + [""]
        with open(os.path.join(args.output_dir, f"{name}.conll"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        print(f"{name}.conll: {len(part)} sentences, entities {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
