"""Times the pretraining step and the input pipeline separately; `pretrain/benchmark.py` is its CLI.

* Train step: the training loop's own jitted, sharded step (`build_train_steps`), compiled ahead
  of time (compile time reported apart), run on one synthetic batch already on the devices, so
  neither the host nor the data pipeline is in the measurement. Warm-up steps are excluded; each
  timed step is waited for and the median is reported.
* Input pipeline: `loader.batch(step, rows)` for successive steps from the configured files on
  one host thread, the work the loop's prefetch threads do (building the shards, a one-time
  cost cached across runs, is reported apart).

Synthetic batches use `data.vocab_size` for the model, so the step timing needs no tokenizer.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipeline import documents
from data_pipeline import loader as data_loader
from data_pipeline.errors import ConfigError
from pretrain.compute import flops
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import sharding, steps, validation
from pretrain.training.optimizer import make_optimizer
from pretrain.training.workdir import data_cache_dir, prepare_tokenizer


def synthetic_batch(
    batch_size: int,
    seq_len: int,
    num_predictions: int,
    vocab_size: int,
    seed: int = 0,
    packed: bool = False,
) -> dict[str, np.ndarray]:
    """A full-length pretraining batch of random tokens (Batch table of docs/architecture.md).

    No padding: a dense step costs the same with or without it, and full rows make every masked
    position real. Positions are distinct and never [CLS] (0) or the final [SEP]. `packed` rows
    (data.objective='packed') hold two documents, split at a random point, and no NSP fields.
    """
    if num_predictions > seq_len - 2:
        raise ConfigError(
            f"data.max_predictions_per_seq={num_predictions} does not fit in "
            f"data.max_seq_length={seq_len} - 2 maskable positions."
        )
    rng = np.random.default_rng(seed)
    b, s, p = batch_size, seq_len, num_predictions
    low = min(5, vocab_size - 1)  # Skip the special ids when the vocabulary allows it.
    positions = np.sort(rng.random((b, s - 2)).argsort(axis=1)[:, :p] + 1, axis=1)
    if packed:
        split = rng.integers(1, s, (b, 1))
        index = np.arange(s)[None, :]
        return {
            "input_ids": rng.integers(low, vocab_size, (b, s), dtype=np.int32),
            "input_mask": np.ones((b, s), np.int32),
            "segment_ids": np.zeros((b, s), np.int32),
            "document_ids": np.where(index < split, 1, 2).astype(np.int32),
            "positions": np.where(index < split, index, index - split).astype(np.int32),
            "masked_lm_positions": positions.astype(np.int32),
            "masked_lm_ids": rng.integers(low, vocab_size, (b, p), dtype=np.int32),
            "masked_lm_weights": np.ones((b, p), np.float32),
        }
    return {
        "input_ids": rng.integers(low, vocab_size, (b, s), dtype=np.int32),
        "input_mask": np.ones((b, s), np.int32),
        "segment_ids": (np.arange(s)[None, :] >= s // 2).repeat(b, axis=0).astype(np.int32),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(low, vocab_size, (b, p), dtype=np.int32),
        "masked_lm_weights": np.ones((b, p), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (b,), dtype=np.int32),
        "next_sentence_weights": np.ones((b,), np.float32),
    }


def peak_memory() -> tuple[int | None, str]:
    """(bytes, source): the largest per-device allocator peak, else the process's max RSS.

    Accelerators report `peak_bytes_in_use` (since process start). CPU devices report nothing,
    so there the number is the peak resident memory of the whole process ('host_max_rss').
    """
    stats = [device.memory_stats() for device in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
    if peaks:
        return int(max(peaks)), "device_peak_bytes_in_use"
    if jax.local_devices()[0].platform == "cpu":
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(max_rss if sys.platform == "darwin" else max_rss * 1024), "host_max_rss"
    return None, "unavailable"


@dataclasses.dataclass
class StepRunner:
    """The compiled train step with its state and device-resident batch, ready to be timed."""

    step: Any  # Compiled (state, batch) -> (state, metrics); the state is donated.
    state: steps.TrainState
    batch: dict[str, jax.Array]
    compile_time_s: float
    metrics: dict[str, jax.Array] | None = None

    def run(self, num_steps: int) -> list[float]:
        """Seconds of each of `num_steps` steps, each waited for before the next starts."""
        times = []
        for _ in range(num_steps):
            start = time.perf_counter()
            self.state, self.metrics = self.step(self.state, self.batch)
            jax.block_until_ready((self.state, self.metrics))
            times.append(time.perf_counter() - start)
        return times


def build_train_steps(
    config: ml_collections.ConfigDict, vocab_size: int, mesh: jax.sharding.Mesh
) -> steps.Steps:
    """The jitted, sharded pretraining steps of `config`, built as `loop.train` builds them."""
    task = PretrainingTask(config, vocab_size)
    tx, schedule = make_optimizer(
        config.optimizer, config.num_train_steps, task.model_config.num_hidden_layers
    )
    return steps.build_steps(
        task,
        tx,
        schedule,
        mesh,
        tuple(config.mesh.logical_axis_rules),
        grad_accum_steps=config.grad_accum_steps,
        seed=config.seed,
    )


def prepare_train_step(
    config: ml_collections.ConfigDict, host_batch: dict[str, np.ndarray] | None = None
) -> StepRunner:
    """The loop's jitted step (`build_train_steps`), its state and a batch on devices.

    `host_batch` is the global batch as numpy (default: `synthetic_batch` from the config).
    """
    mesh = sharding.create_mesh(config.mesh)
    rules = tuple(config.mesh.logical_axis_rules)
    validation.check_batch_layout(config, sharding.data_parallel_size(mesh, rules))
    vocab_size = config.data.vocab_size
    jitted = build_train_steps(config, vocab_size, mesh)
    state = jitted.init()
    b, s = config.global_batch_size, config.data.max_seq_length
    if host_batch is None:
        p = config.data.max_predictions_per_seq
        packed = config.data.objective == "packed"
        host_batch = synthetic_batch(b, s, p, vocab_size, config.seed, packed=packed)
    rows = sharding.process_rows(mesh, rules, b)
    local = {k: np.asarray(v)[rows] for k, v in host_batch.items()}
    batch = sharding.host_to_global(local, mesh, rules, b)
    jax.block_until_ready((state, batch))

    start = time.perf_counter()
    # The loop's jitted step, compiled ahead of time: the same executable, timed apart.
    compiled = jitted.train_step.lower(state, batch).compile()
    return StepRunner(compiled, state, batch, compile_time_s=time.perf_counter() - start)


def time_train_step(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Compile time and median step time of the configured train step on a synthetic batch."""
    bench = config.benchmark
    if bench.timed_steps < 1 or bench.warmup_steps < 0:
        raise ConfigError(
            f"config.benchmark.timed_steps={bench.timed_steps} must be >= 1 and "
            f"config.benchmark.warmup_steps={bench.warmup_steps} >= 0."
        )
    runner = prepare_train_step(config)
    runner.run(bench.warmup_steps)
    times = runner.run(bench.timed_steps)

    step_time = statistics.median(times)
    tokens_per_sec = config.global_batch_size * config.data.max_seq_length / step_time
    num_devices = jax.device_count()
    device_kind = jax.devices()[0].device_kind
    step_flops = flops.config_train_flops(config, config.data.vocab_size)
    peak = flops.peak_flops_per_device(device_kind, config.dtype, bench.peak_flops_per_device)
    memory, memory_source = peak_memory()
    return {
        "tokens_per_sec": tokens_per_sec,
        "step_time_s": step_time,
        "step_time_min_s": min(times),
        "step_time_max_s": max(times),
        "compile_time_s": runner.compile_time_s,
        "mfu": flops.mfu(tokens_per_sec, step_flops.per_token, peak, num_devices),
        "model_flops_per_token": step_flops.per_token,
        "model_flops_per_sec_per_device": tokens_per_sec * step_flops.per_token / num_devices,
        "peak_flops_per_device": peak,
        "peak_memory_bytes": memory,
        "peak_memory_source": memory_source,
        "devices": num_devices,
        "device_kind": device_kind,
        "loss": float(runner.metrics["loss"]),  # A real, finite loss: the step ran.
    }


def check_data_files(config: ml_collections.ConfigDict) -> None:
    """MissingInputError/ConfigError now, before compiling, if the training files are missing."""
    validation.check_pretraining(config)
    spec = config.data.train_files
    if not documents.is_tfds_spec(spec):
        documents.resolve_files(spec)


def time_input_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Tokens/s that `loader.batch` delivers for successive steps from `data.train_files`.

    The tokenizer comes from `data.tokenizer_model` or is trained into `workdir`, where text is
    built into shards too (cached: a second run skips building them).
    """
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    data_config = config.data.copy_and_resolve_references()
    data_config.eval_files = ""  # Only the train pipeline feeds the step.
    start = time.perf_counter()
    tokenizer = prepare_tokenizer(data_config, workdir_path)
    loader, _ = data_loader.build_datasets(
        data_config,
        tokenizer,
        seed=config.seed,
        global_batch_size=config.global_batch_size,
        eval_batch_size=config.eval_batch_size,
        cache_dir=data_cache_dir(workdir_path),
    )
    setup_time = time.perf_counter() - start

    mesh = sharding.create_mesh(config.mesh)
    rows = sharding.process_rows(mesh, tuple(config.mesh.logical_axis_rules), loader.batch_size)
    loader.batch(0, rows=rows)  # Warm-up: the shards' readers open, numpy's first calls.
    num_batches = max(int(config.benchmark.input_batches), 1)
    start = time.perf_counter()
    for step in range(1, num_batches + 1):
        loader.batch(step, rows=rows)
    elapsed = time.perf_counter() - start
    tokens = num_batches * len(rows) * config.data.max_seq_length
    return {
        # Every process builds only its rows at this rate: the global rate is process_count x.
        "input_tokens_per_sec": tokens / elapsed * jax.process_count(),
        "input_setup_time_s": setup_time,
        "input_examples": loader.num_examples,
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The benchmark: the train step, then the input pipeline; one flat dict of results."""
    check_data_files(config)
    result = time_train_step(config)
    result.update(time_input_pipeline(config, workdir))
    result["input_to_step_ratio"] = result["input_tokens_per_sec"] / result["tokens_per_sec"]
    result.update(
        dtype=config.dtype,
        global_batch_size=config.global_batch_size,
        seq_len=config.data.max_seq_length,
        vocab_size=config.data.vocab_size,
        attention_impl=config.model.attention_impl,
        remat_policy=config.model.remat_policy,
    )
    return result
