"""Build a retrieval task from WordNet noun synsets (Debian `wordnet-base`): words -> gloss.

A query is a synset's words (`aardvark, ant bear, anteater, Orycteropus afer`), its one relevant
document the synset's gloss (`nocturnal burrowing mammal of the grasslands of Africa ...`): a
reverse dictionary, where the words rarely occur in their own definition, so lexical matching
alone does poorly. WordNet 3.0 is under Princeton's WordNet licence (free use and
redistribution, with its copyright notice; see the package's copyright file). Nothing is
committed.

    tmp=$(mktemp -d) && (cd "$tmp" && apt-get download wordnet-base && dpkg -x wordnet-base_*.deb x)
    python scripts/make_wordnet_retrieval_task.py --wordnet_dir="$tmp/x/usr/share/wordnet" \
        --output_dir=/tmp/wordnet_retrieval

writes, from disjoint shuffled synsets (fixed seed),

    /tmp/wordnet_retrieval/pairs.tsv       --train_pairs rows `words<TAB>gloss` to train on
    /tmp/wordnet_retrieval/beir/           a BEIR folder: --queries queries, a corpus of
                                           --corpus_size glosses (each query's, and others)
"""

from __future__ import annotations

import argparse
import json
import os
import random

from make_wordnet_task import read_noun_synsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wordnet_dir", required=True, help="usr/share/wordnet")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_pairs", type=int, default=30_000)
    parser.add_argument("--queries", type=int, default=3_000)
    parser.add_argument("--corpus_size", type=int, default=30_000, help="at least --queries")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = os.path.join(args.wordnet_dir, "data.noun")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no {path}: point --wordnet_dir at usr/share/wordnet")
    # "words: gloss" -> (words, gloss); synsets whose gloss is one of another's are dropped, so
    # every query has exactly one relevant document.
    pairs, seen = [], set()
    for _, text in read_noun_synsets(path):
        words, _, gloss = text.partition(": ")
        if gloss and gloss not in seen:
            seen.add(gloss)
            pairs.append((words, gloss))
    need = args.train_pairs + args.corpus_size
    if args.corpus_size < args.queries or need > len(pairs):
        raise SystemExit(f"error: {len(pairs)} synsets: ask for fewer pairs, queries or documents")
    random.Random(args.seed).shuffle(pairs)
    evals, train = pairs[: args.corpus_size], pairs[args.corpus_size : need]
    beir = os.path.join(args.output_dir, "beir")
    os.makedirs(os.path.join(beir, "qrels"), exist_ok=True)
    with open(os.path.join(args.output_dir, "pairs.tsv"), "w", encoding="utf-8") as f:
        f.write("".join(f"{words}\t{gloss}\n" for words, gloss in train))
    with open(os.path.join(beir, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for i, (_, gloss) in enumerate(evals):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": gloss}) + "\n")
    with open(os.path.join(beir, "queries.jsonl"), "w", encoding="utf-8") as f:
        for i, (words, _) in enumerate(evals[: args.queries]):
            f.write(json.dumps({"_id": f"q{i}", "text": words}) + "\n")
    with open(os.path.join(beir, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.write("".join(f"q{i}\td{i}\t1\n" for i in range(args.queries)))
    print(f"pairs.tsv: {len(train)} pairs; beir/: {args.queries} queries, {len(evals)} documents")


if __name__ == "__main__":
    main()
