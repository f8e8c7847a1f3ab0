"""Does a small BERT learn to use context? Ours and Hugging Face's PyTorch BERT on a copy task.

Every masked position's label is the token to its left (random tokens elsewhere), so unigram
statistics are worthless: the loss stays at ln(vocab - 5) until attention learns the offset -1.
Both models get the same architecture, batches, AdamW (lr, 50 warmup steps, linear decay to
`--decay_steps`, weight decay 0.01, clipping at 1) and dropout 0.1. Used in docs/finetuning.md
to show that the masked-LM plateau of CI-sized pretraining runs is BERT's, not a bug of ours.

    python benchmarks/copy_task_plateau.py --seq_len=64   # both stay at ln(95) = 4.55
    python benchmarks/copy_task_plateau.py --seq_len=16   # both leave it within ~400 steps

Needs the `hf` extra (torch, transformers) for the PyTorch peer.
"""

import argparse

import numpy as np

VOCAB, HIDDEN, LAYERS, HEADS, FFN = 100, 64, 2, 4, 256


def copy_batch(step: int, batch: int, seq_len: int, preds: int) -> dict[str, np.ndarray]:
    """Random tokens; `preds` positions replaced by [MASK] (4), labelled with their left token."""
    rng = np.random.default_rng(step)
    ids = rng.integers(5, VOCAB, (batch, seq_len))
    ids[:, 0] = 2  # [CLS]
    pos = np.sort(np.stack([rng.choice(np.arange(2, seq_len), preds, False) for _ in ids]), 1)
    labels = np.take_along_axis(ids, pos - 1, 1)
    np.put_along_axis(ids, pos, 4, 1)
    return {"input_ids": ids, "positions": pos, "labels": labels}


def run_ours(args) -> None:
    import jax
    import ml_collections

    from configs import default
    from pretrain.tasks.pretraining import PretrainingTask
    from pretrain.training import sharding
    from pretrain.training.optimizer import make_optimizer
    from pretrain.training.steps import build_steps

    config = default.get_config()
    config.model.update(
        dict(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            max_position_embeddings=max(64, args.seq_len),
        )
    )
    config.dtype = "float32"
    config.optimizer.learning_rate, config.optimizer.warmup_steps = args.lr, 50
    tx, schedule = make_optimizer(config.optimizer, args.decay_steps)
    rules = tuple(config.mesh.logical_axis_rules)
    mesh = sharding.create_mesh(
        ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1]
    )
    task = PretrainingTask(config, VOCAB)
    steps = build_steps(task, tx, schedule, mesh, rules, grad_accum_steps=1, seed=0)
    state, rows = steps.init(), sharding.process_rows(mesh, rules, args.batch)
    b, s, p = args.batch, args.seq_len, args.preds
    for step in range(args.steps):
        raw = copy_batch(step, b, s, p)
        batch = {
            "input_ids": raw["input_ids"].astype(np.int32),
            "input_mask": np.ones((b, s), np.int32),
            "segment_ids": np.zeros((b, s), np.int32),
            "masked_lm_positions": raw["positions"].astype(np.int32),
            "masked_lm_ids": raw["labels"].astype(np.int32),
            "masked_lm_weights": np.ones((b, p), np.float32),
            "next_sentence_labels": np.zeros(b, np.int32),
            "next_sentence_weights": np.ones(b, np.float32),  # A constant label: trivial.
        }
        state, m = steps.train_step(
            state, sharding.host_to_global({k: v[rows] for k, v in batch.items()}, mesh, rules, b)
        )
        if (step + 1) % args.log_every == 0:
            print(f"ours  step {step + 1}: mlm_loss {float(m['mlm_loss']):.3f} "
                  f"acc {float(m['mlm_accuracy']):.3f}", flush=True)  # fmt: skip


def run_torch(args) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            max_position_embeddings=max(64, args.seq_len),
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm, total = 50, args.decay_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / (total - warm)))
    )
    for step in range(args.steps):
        raw = copy_batch(step, args.batch, args.seq_len, args.preds)
        labels = np.full(raw["input_ids"].shape, -100)
        np.put_along_axis(labels, raw["positions"], raw["labels"], 1)
        ids, labels = torch.tensor(raw["input_ids"]), torch.tensor(labels)
        out = model(input_ids=ids, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % args.log_every == 0:
            hit = out.logits.argmax(-1)[labels != -100] == labels[labels != -100]
            print(f"torch step {step + 1}: mlm_loss {out.loss.item():.3f} "
                  f"acc {hit.float().mean().item():.3f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--preds", type=int, default=0, help="masked positions (0: 15%%)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--decay_steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log_every", type=int, default=100)
    parser.add_argument("--peers", default="ours,torch")
    args = parser.parse_args()
    args.preds = args.preds or max(1, round(0.15 * args.seq_len))
    for peer in args.peers.split(","):
        {"ours": run_ours, "torch": run_torch}[peer](args)


if __name__ == "__main__":
    main()
