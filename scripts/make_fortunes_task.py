"""Build a topic-classification task from Debian's `fortunes` package (text not in data/sample).

Each fortune of two categories becomes one `label<TAB>text` row (whitespace collapsed to single
spaces, fortunes over --max_chars dropped); rows are shuffled with a fixed seed and split into
train and eval TSVs for `python -m pretrain.finetune`. The fortune files are freely
redistributable (Debian main; see the package's copyright file); nothing is committed.

    tmp=$(mktemp -d) && (cd "$tmp" && apt-get download fortunes && dpkg -x fortunes_*.deb x)
    python scripts/make_fortunes_task.py --fortunes_dir="$tmp/x/usr/share/games/fortunes" \
        --categories=computers,politics --output_dir=/tmp/fortunes_task

writes /tmp/fortunes_task/{train,eval}.tsv.
"""

import argparse
import os
import random


def read_fortunes(path: str, max_chars: int) -> list[str]:
    """The fortunes of one strfile source file (entries separated by lines holding '%')."""
    with open(path, encoding="utf-8", errors="replace") as f:
        entries = f.read().split("\n%\n")
    texts = [" ".join(entry.split()) for entry in entries]
    return [t for t in texts if 20 <= len(t) <= max_chars]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fortunes_dir", required=True, help="usr/share/games/fortunes")
    parser.add_argument("--categories", default="computers,politics", help="two or more files")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--eval_fraction", type=float, default=0.25)
    parser.add_argument("--max_chars", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    for category in args.categories.split(","):
        path = os.path.join(args.fortunes_dir, category)
        if not os.path.isfile(path):
            raise SystemExit(f"error: no fortune file {path}: check --fortunes_dir/--categories")
        rows += [f"{category}\t{text}" for text in read_fortunes(path, args.max_chars)]
    random.Random(args.seed).shuffle(rows)
    n_eval = int(len(rows) * args.eval_fraction)
    os.makedirs(args.output_dir, exist_ok=True)
    for name, part in (("eval", rows[:n_eval]), ("train", rows[n_eval:])):
        with open(os.path.join(args.output_dir, f"{name}.tsv"), "w", encoding="utf-8") as f:
            f.write("".join(row + "\n" for row in part))
        counts = {c: sum(r.startswith(c + "\t") for r in part) for c in args.categories.split(",")}
        print(f"{name}.tsv: {len(part)} rows {counts}")


if __name__ == "__main__":
    main()
