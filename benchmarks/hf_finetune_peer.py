"""Fine-tune an exported checkpoint in transformers (PyTorch): the outside check on our fine-tuning.

    python -m pretrain.export_hf --workdir=/tmp/q/bert --output=/tmp/q/bert_hf
    python benchmarks/hf_finetune_peer.py --hf_dir=/tmp/q/bert_hf \
        --train=/tmp/wordnet_task/train.tsv --eval=/tmp/wordnet_task/eval.tsv --lr=1e-4

`AutoModelForSequenceClassification` on the exported folder (BERT keeps its pooler; ModernBERT
its head), `AutoTokenizer` ids, the recipe of `configs/finetune_classify.py`: AdamW (weight decay
0.01, not on biases and norms), linear warmup over 10% then linear decay, clipping at 1.0,
dropout as the config, batches drawn from a seeded shuffle each epoch. `--random_init` trains
the same architecture from transformers' initializer. The last stdout line is one JSON object
with eval accuracy and macro-F1 and the fraction of eval rows given the majority prediction.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np


def read_tsv(path: str) -> tuple[list[str], list[str]]:
    labels, texts = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            label, text = line.rstrip("\n").split("\t", 1)
            labels.append(label)
            texts.append(text)
    return labels, texts


def macro_f1(predicted: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = float(np.sum((predicted == c) & (gold == c)))
        fp = float(np.sum((predicted == c) & (gold != c)))
        fn = float(np.sum((predicted != c) & (gold == c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def train(model, tokenized, labels, args, torch) -> float:
    """The recipe's loop; returns the seconds it took."""
    decayed = [p for n, p in model.named_parameters() if p.ndim >= 2]
    others = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.01}, {"params": others, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.999), eps=1e-6,
    )  # fmt: skip
    warmup = max(int(0.1 * args.steps), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(s / warmup, max(args.steps - s, 0) / max(args.steps - warmup, 1)),
    )
    rng = np.random.default_rng(args.seed)
    order: list[int] = []
    model.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        if len(order) < args.batch:
            order += list(rng.permutation(len(labels)))
        rows, order = order[: args.batch], order[args.batch :]
        out = model(
            input_ids=tokenized["input_ids"][rows],
            attention_mask=tokenized["attention_mask"][rows],
            labels=labels[rows],
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return time.perf_counter() - start


def predict(model, tokenized, torch) -> np.ndarray:
    model.eval()
    predicted = []
    with torch.no_grad():
        for i in range(0, len(tokenized["input_ids"]), 128):
            logits = model(
                input_ids=tokenized["input_ids"][i : i + 128],
                attention_mask=tokenized["attention_mask"][i : i + 128],
            ).logits
            predicted.append(logits.argmax(-1).numpy())
    return np.concatenate(predicted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf_dir", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random_init", action="store_true")
    args = parser.parse_args()

    import torch
    import transformers

    torch.manual_seed(args.seed)
    train_labels, train_texts = read_tsv(args.train)
    eval_labels, eval_texts = read_tsv(args.eval)
    names = sorted(set(train_labels))
    index = {name: i for i, name in enumerate(names)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.hf_dir)
    kwargs = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id=index)
    if args.random_init:
        config = transformers.AutoConfig.from_pretrained(args.hf_dir, **kwargs)
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            args.hf_dir, **kwargs
        )

    def encode(texts):
        return tokenizer(texts, truncation=True, max_length=args.seq, padding="max_length",
                         return_tensors="pt")  # fmt: skip

    labels = torch.tensor([index[label] for label in train_labels])
    seconds = train(model, encode(train_texts), labels, args, torch)
    predicted = predict(model, encode(eval_texts), torch)
    gold = np.array([index.get(label, -1) for label in eval_labels])
    top_share = collections.Counter(predicted.tolist()).most_common(1)[0][1] / len(predicted)
    print(json.dumps({
        "hf_dir": args.hf_dir, "random_init": args.random_init, "lr": args.lr,
        "steps": args.steps, "eval_accuracy": float(np.mean(predicted == gold)),
        "eval_macro_f1": macro_f1(predicted, gold, len(names)),
        "most_predicted_share": top_share, "train_seconds": seconds,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
