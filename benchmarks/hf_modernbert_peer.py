"""The peer of a ModernBERT pretraining run: transformers' PyTorch `ModernBertForMaskedLM` of the
same size, trained on the very same batches, evaluated on the very same eval set.

    python benchmarks/hf_modernbert_peer.py --config=configs/modernbert_cpu.py \
        --workdir=/tmp/q/peer --config.data.train_files=/tmp/gcide/train.txt \
        --config.data.eval_files=/tmp/gcide/eval.txt \
        --config.data.tokenizer_model=/tmp/gcide/sp8k.model

Same config file and flags as `pretrain.train`: the model (`pretrain.hf.convert.config_to_hf`),
the batches (this project's loader: packed rows, dynamic 30% masking, the same seed), the eval
set (15% masking), AdamW with the same betas, eps, weight decay (not on biases and norms),
clipping and learning-rate schedule. What differs is the model code and framework: PyTorch eager
on all CPU threads, `sdpa` attention. transformers' ModernBERT on CPU takes no document ids, so
its packed rows attend across document boundaries (ours do not); positions run 0..S-1.

Prints progress to stderr and, last on stdout, one JSON object: the eval rows (step, MLM loss and
accuracy), the train loss at the end and the seconds spent in training steps.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline import loader as loader_lib  # noqa: E402
from pretrain.hf import convert as hf_convert  # noqa: E402
from pretrain.models.config import EncoderConfig  # noqa: E402
from pretrain.training import workdir as workdir_lib  # noqa: E402
from pretrain.training.optimizer import learning_rate_schedule  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "A pretraining config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the data cache and the results.")
flags.mark_flags_as_required(["config", "workdir"])


def dense_labels(batch: dict[str, np.ndarray]) -> np.ndarray:
    """[B, S] labels as transformers takes them: the original id at masked positions, -100
    elsewhere (padding predictions have weight 0 and stay -100)."""
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    ids = np.where(batch["masked_lm_weights"] > 0, batch["masked_lm_ids"], -100)
    np.put_along_axis(labels, batch["masked_lm_positions"], ids, axis=1)
    return labels


def evaluate(torch, model, evals) -> tuple[float, float]:
    """(MLM loss, MLM accuracy) over the masked positions of the whole eval set."""
    model.eval()
    loss_sum = correct = count = 0.0
    with torch.no_grad():
        for i in range(evals.num_batches):
            batch = evals.batch(i)
            labels = torch.from_numpy(dense_labels(batch))
            logits = model(
                input_ids=torch.from_numpy(batch["input_ids"]).long(),
                attention_mask=torch.from_numpy(batch["input_mask"]).long(),
            ).logits
            real = labels != -100
            picked = logits[real]
            loss_sum += float(
                torch.nn.functional.cross_entropy(picked, labels[real], reduction="sum")
            )
            correct += float((picked.argmax(-1) == labels[real]).sum())
            count += float(real.sum())
    model.train()
    return loss_sum / count, correct / count


def run(config, workdir: str) -> dict:
    import torch
    import transformers

    from data_pipeline import vocab

    os.makedirs(workdir, exist_ok=True)
    tokenizer = vocab.load(config.data.tokenizer_model)
    train, evals = loader_lib.build_datasets(
        config.data, tokenizer, config.seed, global_batch_size=config.global_batch_size,
        eval_batch_size=config.eval_batch_size, cache_dir=workdir_lib.data_cache_dir(workdir),
    )  # fmt: skip
    ours = EncoderConfig.from_config(config.model, vocab_size=tokenizer.vocab_size, dtype="float32")
    hf_config = transformers.ModernBertConfig(
        **hf_convert.config_to_hf(ours, "masked_lm", tokenizer)
    )
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(config.seed)
    model = transformers.ModernBertForMaskedLM(hf_config)
    model.train()
    opt = config.optimizer
    decayed = [p for n, p in model.named_parameters() if p.ndim >= 2]
    others = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": opt.weight_decay},
         {"params": others, "weight_decay": 0.0}],
        lr=1.0, betas=(opt.b1, opt.b2), eps=opt.eps,
    )  # fmt: skip
    schedule = learning_rate_schedule(opt, config.num_train_steps)
    rows, train_seconds, loss = [], 0.0, float("nan")
    for step in range(config.num_train_steps):
        start = time.perf_counter()
        batch = train.batch(step)
        for group in optimizer.param_groups:
            group["lr"] = float(schedule(step))
        out = model(
            input_ids=torch.from_numpy(batch["input_ids"]).long(),
            attention_mask=torch.from_numpy(batch["input_mask"]).long(),
            labels=torch.from_numpy(dense_labels(batch)),
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
        optimizer.step()
        train_seconds += time.perf_counter() - start
        loss = float(out.loss)
        done = step + 1
        if done % config.log_every_steps == 0:
            print(f"peer step {done} | loss {loss:.4f} | {train_seconds:.0f}s", file=sys.stderr)
        if evals is not None and (
            done % config.eval_every_steps == 0 or done == config.num_train_steps
        ):
            eval_loss, eval_accuracy = evaluate(torch, model, evals)
            rows.append(
                {"step": done, "eval_mlm_loss": eval_loss, "eval_mlm_accuracy": eval_accuracy}
            )
            print(f"peer eval {rows[-1]}", file=sys.stderr)
    result = {"evals": rows, "train_loss": loss, "train_seconds": train_seconds,
              "threads": torch.get_num_threads()}  # fmt: skip
    with open(os.path.join(workdir, "peer.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv: list[str]) -> None:
    del argv
    print(json.dumps(run(_CONFIG.value, _WORKDIR.value)))


if __name__ == "__main__":
    app.run(main)
