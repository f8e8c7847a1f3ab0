"""The pretraining loop: config in, checkpoints and metrics out.

`train_and_evaluate(config, workdir)` is the one library call behind `python -m pretrain.train`.
It validates the config, prepares the tokenizer and data, builds the mesh and the sharded train
state (restored from the newest complete checkpoint when there is one), and runs the jitted step.
The batch for step `s` is a pure function of `(seed, s)`, so a resumed run sees exactly the
batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import functools
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from data_pipeline import loader as data_loader
from data_pipeline.tokenizer import Tokenizer
from pretrain import flops, sharding, steps, validate
from pretrain.checkpoint import Checkpointer
from pretrain.metrics import MetricsWriter, ProgressLine, status
from pretrain.model import BertConfig
from pretrain.optimizer import make_optimizer
from pretrain.workdir import data_cache_dir, prepare_tokenizer


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient more often than allowed.

    A FloatingPointError, which the CLI reports as one line: the message names the step and the fix.
    """


class PreemptionWatcher:
    """Turns SIGTERM into "save now and exit 0", agreed by every process on the same step.

    One process: a Python SIGTERM handler sets a flag, read after each step. Several processes:
    JAX's preemption sync manager (started by `jax.distributed.initialize`) catches SIGTERM on
    whichever process gets it and, in the background, has all processes agree through the
    coordination service on the first step that none has passed yet;
    `reached_preemption_sync_point` is True at that step on every process. Per step this costs
    a mutex, not a host round trip. No Python handler is installed then: it would replace the
    manager's C++ one.
    """

    def __init__(self) -> None:
        """Installed first thing, so a SIGTERM during data preparation is not lost."""
        self._requested = threading.Event()
        self._multi_process = jax.process_count() > 1
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._requested.set())

    def start(self, start_step: int) -> None:
        """Called once the starting step is known (after restore)."""
        if self._multi_process:
            try:
                # The manager's step counter starts at 0; a notice before the first step would
                # set the sync point to 1, which a resumed run has already passed.
                multihost_utils.reached_preemption_sync_point(start_step)
            except RuntimeError as e:  # jax_enable_preemption_service=False.
                # SIGTERM keeps its default action: one process stopping alone would leave the
                # others waiting in a collective.
                logging.warning("No coordinated save on SIGTERM: %s", e)
                self._multi_process = False

    def requested_before_start(self) -> bool:
        """True when this single process was told to stop before taking a step."""
        return not self._multi_process and self._requested.is_set()

    def should_stop(self, step: int) -> bool:
        """Called after every step, with the step just taken, by every process."""
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested.is_set()


def _device_batches(
    train_loader: Any,
    start_step: int,
    num_steps: int,
    put: Any,
    rows: Any,
    buffer: int,
) -> Iterator[dict[str, jax.Array]]:
    """Global batches for steps start_step.. on the devices, built ahead on background threads.

    grain builds the numpy batches of this process's rows in parallel; one thread moves them to
    the devices, so the step never waits for host work that could have been done earlier.
    """
    host = grain.MapDataset.range(start_step, num_steps).map(
        lambda s: train_loader.batch(int(s), rows=rows)
    )
    host_iter = iter(
        host.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=buffer))
    )
    ready: queue.Queue = queue.Queue(maxsize=max(buffer, 1))
    done = object()

    def fill() -> None:
        try:
            for local in host_iter:
                ready.put(put(local))
        except Exception as e:  # noqa: BLE001 - re-raised in the consumer thread
            ready.put(e)
        ready.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while (item := ready.get()) is not done:
        if isinstance(item, Exception):
            raise item
        yield item


def evaluate(
    eval_step: Any, params: Any, eval_loader: Any, put: Any, rows: Any, max_batches: int
) -> dict[str, float]:
    """Full pass over the eval set (or its first `max_batches`), summed exactly."""
    n = eval_loader.num_batches if max_batches <= 0 else min(max_batches, eval_loader.num_batches)
    totals = None
    for i in range(n):
        terms = eval_step(params, put(eval_loader.batch(i, rows=rows)))
        totals = terms if totals is None else jax.tree.map(jnp.add, totals, terms)
    return steps.eval_metrics(jax.device_get(totals))


def build_train_steps(
    config: ml_collections.ConfigDict, vocab_size: int, mesh: jax.sharding.Mesh
) -> steps.JittedSteps:
    """The jitted, sharded pretraining steps of `config` (what the loop and the benchmark run)."""
    model_config = BertConfig.from_config(config.model, vocab_size=vocab_size, dtype=config.dtype)
    tx, schedule = make_optimizer(config.optimizer, config.num_train_steps)
    return steps.build_steps(
        model_config,
        tx,
        schedule,
        mesh,
        tuple(config.mesh.logical_axis_rules),
        grad_accum_steps=config.grad_accum_steps,
        seed=config.seed,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Pretrains BERT as `config` says; resumes from `workdir/checkpoints` when possible."""
    workdir_path = epath.Path(workdir)
    is_main = jax.process_index() == 0
    validate.check_config(config)
    preemption = PreemptionWatcher()
    mesh = sharding.create_mesh(config.mesh)
    rules = tuple(config.mesh.logical_axis_rules)
    validate.check_batch_layout(config, sharding.data_parallel_size(mesh, rules))
    if is_main:
        workdir_path.mkdir(parents=True, exist_ok=True)
        (workdir_path / "config.json").write_text(config.to_json_best_effort(indent=2))

    tokenizer: Tokenizer = prepare_tokenizer(config.data, workdir_path)
    train_loader, eval_loader = data_loader.build_datasets(
        config.data,
        tokenizer,
        seed=config.seed,
        global_batch_size=config.global_batch_size,
        eval_batch_size=config.eval_batch_size,
        cache_dir=data_cache_dir(workdir_path),
    )
    jitted = build_train_steps(config, tokenizer.vocab_size, mesh)
    checkpointer = Checkpointer(
        workdir_path / "checkpoints", keep=config.keep_checkpoints, cleanup_tmp=True
    )
    restored = checkpointer.restore_latest(jitted.abstract_state_with_shardings())
    if restored is None:
        state = jitted.init()
        start_step = 0
    else:
        state, start_step = restored
        status(f"Resumed from {checkpointer.directory} at step {start_step}.")
    train_step, eval_step = jitted.train_step, jitted.eval_step

    train_rows = sharding.process_rows(mesh, rules, config.global_batch_size)
    put_train = functools.partial(
        sharding.host_to_global,
        mesh=mesh,
        rules=rules,
        rows=train_rows,
        global_batch_size=config.global_batch_size,
    )
    eval_rows = sharding.process_rows(mesh, rules, config.eval_batch_size)
    put_eval = functools.partial(
        sharding.host_to_global,
        mesh=mesh,
        rules=rules,
        rows=eval_rows,
        global_batch_size=config.eval_batch_size,
    )

    writer = MetricsWriter(workdir_path, enabled=is_main)
    progress = ProgressLine(config.num_train_steps, enabled=is_main)
    preemption.start(start_step)
    config_json = config.to_dict()
    tokens_per_step = config.global_batch_size * config.data.max_seq_length
    flops_per_token = flops.config_train_flops(config, tokenizer.vocab_size).per_token
    peak_flops = flops.peak_flops_per_device(
        jax.devices()[0].device_kind, config.dtype, config.benchmark.peak_flops_per_device
    )

    reported_bad_steps = [0]  # Skipped steps already warned about (the count is in the state).

    def check_finite(state: steps.TrainState) -> None:
        bad = int(jax.device_get(state.bad_steps))
        first = int(jax.device_get(state.first_bad_step)) + 1
        if 0 < bad <= config.max_bad_steps and bad > reported_bad_steps[0]:
            reported_bad_steps[0] = bad
            logging.warning(
                "Skipped %d step(s) with a non-finite loss or gradient so far (the first at step "
                "%d); their updates were dropped. The run stops after config.max_bad_steps=%d.",
                bad,
                first,
                config.max_bad_steps,
            )
        if bad > config.max_bad_steps:
            checkpointer.wait()  # The save in flight is from a good step: let it land.
            last_good = checkpointer.latest_step()
            raise NonFiniteError(
                f"non-finite loss or gradient at step {first} ({bad} bad steps, "
                f"config.max_bad_steps={config.max_bad_steps}); the last good checkpoint is "
                f"{'step ' + str(last_good) if last_good is not None else 'none'}. Lower "
                f"config.optimizer.learning_rate or raise config.max_bad_steps to skip such steps."
            )

    def save(step: int, state: steps.TrainState, force: bool = False) -> None:
        check_finite(state)  # Never write a checkpoint past a step that should have stopped us.
        checkpointer.save(step, state, config_json, force=force)

    batches = _device_batches(
        train_loader,
        start_step,
        config.num_train_steps,
        put_train,
        train_rows,
        config.prefetch_batches,
    )
    if preemption.requested_before_start():
        status(f"SIGTERM before the first step: nothing new to save (step {start_step}); exiting.")
        checkpointer.close()
        writer.close()
        return
    if start_step < config.num_train_steps:
        train_step, batches, seconds = steps.compile_ahead(train_step, state, batches)
        status(f"Compiled the train step in {seconds:.1f}s.")
    progress.start(start_step)
    last_time, last_step = time.time(), start_step
    try:
        for step in range(start_step + 1, config.num_train_steps + 1):
            state, metrics = train_step(state, next(batches))
            if step % config.log_every_steps == 0 or step in (1, config.num_train_steps):
                check_finite(state)
                row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.time()
                if step > last_step:
                    row["tokens_per_sec"] = tokens_per_step * (step - last_step) / (now - last_time)
                    row["mfu"] = flops.mfu(
                        row["tokens_per_sec"], flops_per_token, peak_flops, jax.device_count()
                    )
                    last_time, last_step = now, step
                writer.write(step, row)
                progress.show(step, row)
            side_work_start = time.time()  # Eval and saves are not train-step throughput.
            if eval_loader is not None and (
                (config.eval_every_steps and step % config.eval_every_steps == 0)
                or step == config.num_train_steps
            ):
                eval_row = evaluate(
                    eval_step,
                    state.params,
                    eval_loader,
                    put_eval,
                    eval_rows,
                    config.max_eval_batches,
                )
                writer.write(step, eval_row)
                status(
                    f"eval at step {step}: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in eval_row.items())
                )
            stop = preemption.should_stop(step)
            if stop:
                logging.warning("Preempted (SIGTERM): saving step %d and exiting.", step)
            if stop or step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
                save(step, state, force=stop)  # One save per step: orbax refuses a second one.
            if stop:
                break
            last_time += time.time() - side_work_start
    finally:
        # Commit the save in flight on every exit, errors and Ctrl-C included: orbax's threads
        # must finish before the interpreter exits, or the newest checkpoint is left half-written.
        checkpointer.close()
        writer.close()
