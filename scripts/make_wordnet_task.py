"""Build a 26-class classification task from WordNet noun glosses (Debian `wordnet-base`).

Each noun synset becomes one `label<TAB>text` row: the label is its lexicographer file, one of
WordNet's 26 noun categories (noun.animal, noun.artifact, noun.feeling, ...), the text its
words and gloss (`aardvark: nocturnal burrowing mammal of the grasslands of Africa ...`). The
task asks what kind of thing a definition describes; its text is not in the sample corpus nor
in the GCIDE pretraining corpus (scripts/make_reference_corpus.py drops GCIDE's WordNet
paragraphs). WordNet 3.0 is under Princeton's WordNet licence (free use and redistribution,
with its copyright notice; see the package's copyright file). Nothing is committed.

    tmp=$(mktemp -d) && (cd "$tmp" && apt-get download wordnet-base && dpkg -x wordnet-base_*.deb x)
    python scripts/make_wordnet_task.py --wordnet_dir="$tmp/x/usr/share/wordnet" \
        --output_dir=/tmp/wordnet_task --train_rows=30000 --eval_rows=3000

writes /tmp/wordnet_task/{train,eval}.tsv: rows shuffled with a fixed seed, the eval rows
disjoint from the train rows. The majority class (noun.artifact) is ~14% of the rows.
"""

from __future__ import annotations

import argparse
import collections
import os
import random

# WordNet's lexicographer files 03-28: the noun categories (lexnames(5WN)).
NOUN_CATEGORIES = (
    "Tops act animal artifact attribute body cognition communication event feeling food group "
    "location motive object person phenomenon plant possession process quantity relation shape "
    "state substance time"
).split()


def read_noun_synsets(path: str) -> list[tuple[str, str]]:
    """(category, 'words: gloss') of every synset of WordNet's data.noun."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):  # The licence header.
                continue
            fields, _, gloss = line.partition(" | ")
            parts = fields.split()
            lex_file, word_count = int(parts[1]), int(parts[3], 16)
            words = [parts[4 + 2 * i].replace("_", " ") for i in range(word_count)]
            words = [w.split("(")[0] for w in words]  # Adjective markers: "galore(ip)".
            category = "noun." + NOUN_CATEGORIES[lex_file - 3]
            rows.append((category, f"{', '.join(words)}: {' '.join(gloss.split())}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wordnet_dir", required=True, help="usr/share/wordnet")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_rows", type=int, default=30_000)
    parser.add_argument("--eval_rows", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = os.path.join(args.wordnet_dir, "data.noun")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no {path}: point --wordnet_dir at usr/share/wordnet")
    rows = read_noun_synsets(path)
    if args.train_rows + args.eval_rows > len(rows):
        raise SystemExit(f"error: only {len(rows)} synsets: ask for fewer rows")
    random.Random(args.seed).shuffle(rows)
    splits = {
        "eval": rows[: args.eval_rows],
        "train": rows[args.eval_rows : args.eval_rows + args.train_rows],
    }
    os.makedirs(args.output_dir, exist_ok=True)
    for name, part in splits.items():
        with open(os.path.join(args.output_dir, f"{name}.tsv"), "w", encoding="utf-8") as f:
            f.write("".join(f"{label}\t{text}\n" for label, text in part))
        counts = collections.Counter(label for label, _ in part)
        top, n = counts.most_common(1)[0]
        share = n / len(part)
        print(f"{name}.tsv: {len(part)} rows, {len(counts)} classes, majority {top} {share:.3f}")


if __name__ == "__main__":
    main()
