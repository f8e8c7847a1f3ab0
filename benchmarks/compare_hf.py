"""Train-step throughput of this project against Hugging Face BERT on the same shapes, one run.

Peers (installed only for this script, never project dependencies; see benchmarks/README.md):
  torch  transformers `BertForPreTraining`, PyTorch eager, AdamW + global-norm clipping, all
         CPU threads; run with this project's interpreter (transformers 5 + torch).
  flax   transformers 4.x `FlaxBertForPreTraining`, one jitted train step (optax AdamW +
         clipping, state donated); run with `--flax_python`, a venv with transformers<5.
  ours   `pretrain.perf.timing.prepare_train_step`: the training loop's own jitted, sharded step.

Every peer trains (dropout on) on the same full-length batch of random tokens with the same P
masked positions, at float32. Each runs in its own worker process; after set-up and warm-up the
workers take turns, `--steps_per_round` steps at a time in a rotating order, for `--rounds`
rounds, so load from other processes on a shared machine hits every peer alike. Step times are
per step, waited for; the median is reported.

    python benchmarks/compare_hf.py --flax_python=/tmp/hf4-venv/bin/python

The last line of stdout is a JSON object: tokens/s per peer and ours / peer ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = "@@ "  # Prefix of worker lines meant for the orchestrator (libraries print too).


def make_batch(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The shared batch: full rows of random non-special ids, P distinct masked positions each."""
    rng = np.random.default_rng(0)
    b, s, p, v = args.batch, args.seq, args.predictions, args.vocab
    positions = np.sort(rng.random((b, s - 2)).argsort(axis=1)[:, :p] + 1, axis=1)
    return {
        "input_ids": rng.integers(5, v, (b, s)).astype(np.int32),
        "input_mask": np.ones((b, s), np.int32),
        "segment_ids": (np.arange(s)[None, :] >= s // 2).repeat(b, 0).astype(np.int32),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(5, v, (b, p)).astype(np.int32),
        "masked_lm_weights": np.ones((b, p), np.float32),
        "next_sentence_labels": rng.integers(0, 2, b).astype(np.int32),
        "next_sentence_weights": np.ones(b, np.float32),
    }


def dense_labels(batch: dict[str, np.ndarray]) -> np.ndarray:
    """[B, S] MLM labels as Hugging Face takes them: the original id at masked positions, -100
    elsewhere (its loss ignores -100)."""
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    np.put_along_axis(labels, batch["masked_lm_positions"], batch["masked_lm_ids"], axis=1)
    return labels


# ------------------------------------------------------------------------------------------------
# Workers: each builds its step, warms up, then answers "run N" with N step times.


def torch_worker(args: argparse.Namespace):
    import torch
    from transformers import BertConfig, BertForPreTraining

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(512, args.seq),
    )
    model = BertForPreTraining(config).train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        eps=1e-6,
    )
    batch = make_batch(args)
    inputs = {
        "input_ids": torch.from_numpy(batch["input_ids"]).long(),
        "attention_mask": torch.from_numpy(batch["input_mask"]).long(),
        "token_type_ids": torch.from_numpy(batch["segment_ids"]).long(),
        "labels": torch.from_numpy(dense_labels(batch)),
        "next_sentence_label": torch.from_numpy(batch["next_sentence_labels"]).long(),
    }

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    info = {"torch": torch.__version__, "attn": config._attn_implementation}
    return step, info


def flax_worker(args: argparse.Namespace):
    import jax
    import jax.numpy as jnp
    import optax
    import transformers
    from transformers import BertConfig, FlaxBertForPreTraining

    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(512, args.seq),
    )
    model = FlaxBertForPreTraining(config, seed=0, dtype=jnp.float32)
    decay_mask = lambda params: jax.tree_util.tree_map(lambda x: x.ndim > 1, params)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(1e-4, eps=1e-6, weight_decay=0.01, mask=decay_mask),
    )
    batch = make_batch(args)
    labels = dense_labels(batch)
    inputs = {
        "input_ids": jnp.asarray(batch["input_ids"]),
        "attention_mask": jnp.asarray(batch["input_mask"]),
        "token_type_ids": jnp.asarray(batch["segment_ids"]),
        "labels": jnp.asarray(np.maximum(labels, 0)),
        "label_weights": jnp.asarray(labels >= 0, jnp.float32),
        "nsp_labels": jnp.asarray(batch["next_sentence_labels"]),
    }

    def train_step(params, opt_state, step, inputs):
        def loss_fn(params):
            out = model(
                inputs["input_ids"],
                inputs["attention_mask"],
                inputs["token_type_ids"],
                params=params,
                dropout_rng=jax.random.fold_in(jax.random.PRNGKey(0), step),
                train=True,
            )
            mlm = optax.softmax_cross_entropy_with_integer_labels(
                out.prediction_logits, inputs["labels"]
            )  # [B, S]: the model projects every position to the vocabulary.
            w = inputs["label_weights"]
            nsp = optax.softmax_cross_entropy_with_integer_labels(
                out.seq_relationship_logits, inputs["nsp_labels"]
            )
            return (mlm * w).sum() / w.sum() + nsp.mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, step + 1, loss

    jitted = jax.jit(train_step, donate_argnums=(0, 1))
    state = [model.params, tx.init(model.params), jnp.zeros((), jnp.int32)]

    def step() -> None:
        params, opt_state, count, loss = jitted(*state, inputs)
        state[:] = [params, opt_state, count]
        jax.block_until_ready((params, loss))

    info = {"transformers": transformers.__version__, "jax": jax.__version__}
    return step, info


def ours_worker(args: argparse.Namespace):
    sys.path.insert(0, str(REPO))
    import jax

    from configs import default
    from pretrain.perf import timing

    config = default.get_config()
    config.dtype = "float32"
    config.global_batch_size = args.batch
    config.data.vocab_size = args.vocab
    config.data.max_seq_length = args.seq
    config.data.max_predictions_per_seq = args.predictions
    config.model.num_hidden_layers = args.layers
    config.model.hidden_size = args.hidden
    config.model.num_attention_heads = args.heads
    config.model.intermediate_size = args.intermediate
    config.model.attention_impl = args.attention_impl
    runner = timing.prepare_train_step(config, make_batch(args))
    step = lambda: runner.run(1)
    return step, {"jax": jax.__version__, "compile_time_s": runner.compile_time_s}


WORKERS = {"ours": ours_worker, "torch": torch_worker, "flax": flax_worker}


def serve(args: argparse.Namespace) -> None:
    """Worker loop: set up, warm up, then time steps on request."""
    start = time.perf_counter()
    step, info = WORKERS[args.worker](args)
    for _ in range(args.warmup):
        step()
    info["setup_s"] = time.perf_counter() - start
    print(PROTOCOL + json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        command, _, n = line.strip().partition(" ")
        if command != "run":
            break
        times, cpu = [], time.process_time()
        for _ in range(int(n)):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        cpu_per_step = (time.process_time() - cpu) / int(n)
        print(PROTOCOL + json.dumps({"times": times, "cpu_per_step": cpu_per_step}), flush=True)


# ------------------------------------------------------------------------------------------------
# Orchestrator


class Worker:
    def __init__(self, name: str, python: str, args: argparse.Namespace, argv: list[str]):
        # Passive OpenMP waiting is the faster setting for the PyTorch peer on a shared machine:
        # spinning threads fight the other processes for the cores (measured: 8.2 vs 13.4 s/step).
        env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_WAIT_POLICY="PASSIVE")
        self.name = name
        self.proc = subprocess.Popen(
            [python, __file__, f"--worker={name}", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.info = self._read()["ready"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL) :])
        raise RuntimeError(f"worker {self.name} exited with {self.proc.wait()} (see stderr)")

    def run(self, n: int) -> tuple[list[float], float]:
        """Wall seconds of each of `n` steps, and CPU seconds (all threads) per step."""
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        reply = self._read()
        return reply["times"], reply["cpu_per_step"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def compare(args: argparse.Namespace, argv: list[str]) -> dict:
    pythons = {"ours": sys.executable, "torch": sys.executable, "flax": args.flax_python}
    peers = [p for p in args.peers.split(",") if p]
    if "ours" not in peers:
        raise SystemExit("--peers must include 'ours' (the ratios are ours / peer)")
    if "flax" in peers and not args.flax_python:
        raise SystemExit("the flax peer needs --flax_python (see benchmarks/README.md)")
    workers = {}
    for name in peers:  # One at a time: no set-up or compile overlaps another's.
        print(f"starting {name} ...", file=sys.stderr, flush=True)
        workers[name] = Worker(name, pythons[name], args, argv)
    times = {name: [] for name in peers}
    cpu_times = {name: [] for name in peers}
    for r in range(args.rounds):
        order = peers[r % len(peers) :] + peers[: r % len(peers)]
        for name in order:
            wall, cpu = workers[name].run(args.steps_per_round)
            times[name] += wall
            cpu_times[name].append(cpu)
            time.sleep(0.5)  # Let the previous worker's threads go idle.
        medians = {n: round(statistics.median(t), 3) for n, t in times.items()}
        print(f"round {r + 1}/{args.rounds}: median s/step {medians}", file=sys.stderr)
    for w in workers.values():
        w.close()

    tokens = args.batch * args.seq
    result = {"shape": {k: getattr(args, k) for k in SHAPE}, "cpus": os.cpu_count()}
    for name in peers:
        step_time = statistics.median(times[name])
        result[name] = {
            "step_time_s": step_time,
            "tokens_per_sec": tokens / step_time,
            "step_time_min_s": min(times[name]),
            # CPU seconds of all threads per step: less sensitive to other processes' load.
            "cpu_time_per_step_s": statistics.median(cpu_times[name]),
            "step_times_s": [round(t, 4) for t in times[name]],
            **workers[name].info,
        }
    for name in peers:
        if name != "ours":
            ours, peer = result["ours"], result[name]
            result[f"ours_vs_{name}"] = peer["step_time_s"] / ours["step_time_s"]
            result[f"ours_vs_{name}_min"] = peer["step_time_min_s"] / ours["step_time_min_s"]
            result[f"ours_vs_{name}_cpu"] = (
                peer["cpu_time_per_step_s"] / ours["cpu_time_per_step_s"]
            )
    return result


SHAPE = ("layers", "hidden", "heads", "intermediate", "vocab", "seq", "batch", "predictions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--attention_impl", default="xla", help="ours: model.attention_impl")
    parser.add_argument("--peers", default="ours,torch,flax")
    parser.add_argument("--flax_python", default="", help="python of a transformers<5 venv")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps_per_round", type=int, default=3)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args)
        return
    # Workers get the same shape flags.
    argv = [f"--{k}={getattr(args, k)}" for k in (*SHAPE, "attention_impl", "warmup")]
    result = compare(args, argv)
    print(f"{'peer':<6} {'s/step':>8} {'min':>7} {'cpu s':>7} {'tokens/s':>9} {'speedup':>8}")
    for name in args.peers.split(","):
        r = result[name]
        ratio = result.get(f"ours_vs_{name}", 1.0)
        print(
            f"{name:<6} {r['step_time_s']:>8.3f} {r['step_time_min_s']:>7.3f} "
            f"{r['cpu_time_per_step_s']:>7.3f} {r['tokens_per_sec']:>9.0f} {ratio:>7.2f}x"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
