"""The one training loop: a task and a config in, checkpoints and metrics out.

`train(config, workdir, task_cls)` is the library call behind `python -m pretrain.train` and
`python -m pretrain.finetune`. It owns what every task shares: preemption (watched before any
data work), the mesh, the jitted sharded steps (`steps.py`), resume from the newest complete
checkpoint, prefetch to the devices, the non-finite policy, the log / eval / checkpoint cadence,
throughput that leaves eval and saves out, the best checkpoint and the progress line. The task
(`pretrain/training/task.py`) supplies its data, model, loss and metrics. The batch for step `s` is
a pure function of `(seed, s)`, so a resumed run sees exactly the batches an uninterrupted one
would have seen.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from pretrain.compute import flops
from pretrain.training import claim, sharding, steps, validation
from pretrain.training.checkpoint import Checkpointer
from pretrain.training.errors import NonFiniteError
from pretrain.training.evaluation import Feed, Put, evaluate
from pretrain.training.metrics import MetricsWriter, ProgressLine, status
from pretrain.training.optimizer import make_optimizer
from pretrain.training.preemption import PreemptionWatcher
from pretrain.training.task import Task
from pretrain.training.workdir import BEST_DIR, checkpoints_dir


def _device_batches(
    data: Any, start_step: int, num_steps: int, put: Put, rows: np.ndarray, buffer: int
) -> Iterator[dict[str, jax.Array]]:
    """Global batches for steps start_step.. on the devices, built ahead on background threads.

    grain builds the numpy batches of this process's rows on a thread pool; a grain prefetch
    thread then moves them to the devices, so the step never waits for host work that could have
    been done earlier. This is `grain.experimental.device_put`'s structure with our `put`:
    device_put's `jax.device_put` needs the whole global batch on every process, while `put`
    assembles global arrays from each process's own rows.
    """
    host = grain.MapDataset.range(start_step, num_steps).map(
        lambda s: data.batch(int(s), rows=rows)
    )
    local = host.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=buffer))
    on_devices = grain.experimental.ThreadPrefetchIterDataset(
        local.map(put), prefetch_buffer_size=max(buffer, 1)
    )
    return iter(on_devices)


class _FiniteGuard:
    """Reads the state's bad-step counters: warns about skipped steps, stops past the limit."""

    def __init__(self, max_bad_steps: int, checkpointer: Checkpointer):
        self.max_bad_steps = max_bad_steps
        self.checkpointer = checkpointer
        self.reported = 0  # Skipped steps already warned about (the count is in the state).

    def check(self, state: steps.TrainState) -> None:
        bad = int(jax.device_get(state.bad_steps))
        first = int(jax.device_get(state.first_bad_step)) + 1
        if 0 < bad <= self.max_bad_steps and bad > self.reported:
            self.reported = bad
            logging.warning(
                "Skipped %d step(s) with a non-finite loss or gradient so far (the first at step "
                "%d); their updates were dropped. The run stops after config.max_bad_steps=%d.",
                bad,
                first,
                self.max_bad_steps,
            )
        if bad > self.max_bad_steps:
            self.checkpointer.wait()  # The save in flight is from a good step: let it land.
            last_good = self.checkpointer.latest_step()
            raise NonFiniteError(
                f"non-finite loss or gradient at step {first} ({bad} bad steps, "
                f"config.max_bad_steps={self.max_bad_steps}); the last good checkpoint is "
                f"{'step ' + str(last_good) if last_good is not None else 'none'}. Lower "
                f"config.optimizer.learning_rate or raise config.max_bad_steps to skip such steps."
            )


class _Throughput:
    """Train-step examples/s, tokens/s and MFU between log rows; eval and saves left out."""

    def __init__(self, config: ml_collections.ConfigDict, task: Task, start_step: int):
        self.examples_per_step = config.global_batch_size
        self.tokens_per_step = config.global_batch_size * task.seq_len
        self.flops_per_token = task.flops_per_token()
        kind = jax.devices()[0].device_kind
        self.peak = flops.peak_flops_per_device(
            kind, config.dtype, config.get("benchmark", {}).get("peak_flops_per_device", 0.0)
        )
        self.last_time, self.last_step = time.time(), start_step

    def exclude(self, seconds: float) -> None:
        self.last_time += seconds

    def rates(self, step: int) -> dict[str, float | None]:
        now = time.time()
        if step <= self.last_step:
            return {}
        steps_per_sec = (step - self.last_step) / (now - self.last_time)
        self.last_time, self.last_step = now, step
        tokens_per_sec = self.tokens_per_step * steps_per_sec
        row = {
            "tokens_per_sec": tokens_per_sec,
            "examples_per_sec": self.examples_per_step * steps_per_sec,
        }
        if self.flops_per_token is not None:
            row["mfu"] = flops.mfu(
                tokens_per_sec, self.flops_per_token, self.peak, jax.device_count()
            )
        return row


def _due(step: int, every: int, last: int) -> bool:
    """Every `every` steps and at the last step; never when `every` is 0."""
    return every > 0 and (step % every == 0 or step == last)


@dataclasses.dataclass(frozen=True)
class _Session:
    """What one training session works with, built once by `_build_and_run`."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    task: Task
    jitted: steps.Steps
    rules: sharding.Rules
    preemption: PreemptionWatcher
    record: dict[str, Any]  # The config saved with every checkpoint.
    checkpointer: Checkpointer
    best: Checkpointer | None  # WORKDIR/best, when the task names a best metric.


def train(
    config: ml_collections.ConfigDict, workdir: str, task_cls: type[Task]
) -> dict[str, float]:
    """Trains the task as `config` says, resuming from WORKDIR/checkpoints; returns the last eval
    row (empty when there was no evaluation)."""
    workdir_path = epath.Path(workdir)
    preemption = PreemptionWatcher()  # First: a signal during data preparation is not lost.
    lock = None
    try:
        task_cls.check_config(config)
        mesh = sharding.create_mesh(config.mesh)
        rules = tuple(config.mesh.logical_axis_rules)
        validation.check_batch_layout(config, sharding.data_parallel_size(mesh, rules))
        lock = claim.claim(workdir_path, task_cls.kind, config)
        return _build_and_run(config, workdir_path, task_cls, mesh, rules, preemption)
    finally:
        if lock is not None:
            lock.release()
        preemption.close()


def _build_and_run(
    config: ml_collections.ConfigDict,
    workdir_path: epath.Path,
    task_cls: type[Task],
    mesh: jax.sharding.Mesh,
    rules: sharding.Rules,
    preemption: PreemptionWatcher,
) -> dict[str, float]:
    """The task's data, the jitted steps and the state, then the loop."""
    task = task_cls.build(config, workdir_path)
    tx, schedule = make_optimizer(
        config.optimizer, config.num_train_steps, task.model_config.num_hidden_layers
    )
    jitted = steps.build_steps(
        task,
        tx,
        schedule,
        mesh,
        rules,
        grad_accum_steps=config.grad_accum_steps,
        seed=config.seed,
    )
    checkpointer = Checkpointer(
        checkpoints_dir(workdir_path), keep=config.keep_checkpoints, cleanup_tmp=True
    )
    best = None
    if task.best_metric and task.eval_data is not None:
        best = Checkpointer(workdir_path / BEST_DIR, keep=1, cleanup_tmp=True)
    session = _Session(
        config, workdir_path, task, jitted, rules, preemption, task.checkpoint_record(),
        checkpointer, best,
    )  # fmt: skip
    try:
        state, start_step = _restore_or_init(task, jitted, checkpointer)
        return _run(session, state, start_step)
    finally:
        # Commit the saves in flight on every exit, errors and Ctrl-C included: orbax's threads
        # must finish before the interpreter exits, or the newest checkpoint is left half-written.
        for manager in (checkpointer, best):
            if manager is not None:
                manager.close()


def _restore_or_init(
    task: Task, jitted: steps.Steps, checkpointer: Checkpointer
) -> tuple[steps.TrainState, int]:
    """The newest complete checkpoint's state, else a fresh one (from the task's initial params)."""
    restored = checkpointer.restore_latest(jitted.abstract_saveable)
    if restored is not None:
        state, start_step = restored
        status(f"Resumed from {checkpointer.directory} at step {start_step}.")
        if jitted.frozen is not None:  # The frozen weights come from where they always do.
            fresh = jitted.init(task.initial_params(jitted.abstract_state.params))
            state = jitted.combine(state, fresh)
        return state, start_step
    return jitted.init(task.initial_params(jitted.abstract_state.params)), 0


class _Best:
    """WORKDIR/best: the checkpoint of the best eval row so far (by the task's best_metric).

    Not orbax's `best_fn` option: that keeps the best of the steps it was asked to save, so every
    evaluation would write a full checkpoint (optimizer moments included) and delete the worse
    one; comparing first writes only the improvements.
    """

    def __init__(self, manager: Checkpointer | None, metric: str | None, record: dict[str, Any],
                 saveable: Callable[[steps.TrainState], Any]):  # fmt: skip
        self.manager, self.metric, self.record = manager, metric, record
        self.saveable = saveable
        self.value = -np.inf
        self.step, self.outputs = None, None  # The best evaluation of this session.
        if manager is not None and (step := manager.latest_step()) is not None:
            self.value = manager.read_config(step)["best"]["value"]

    def offer(
        self, step: int, state: steps.TrainState, row: dict, outputs: dict, guard: _FiniteGuard
    ) -> None:
        if self.manager is None or not row[self.metric] > self.value:
            return
        guard.check(state)  # Never keep a state past a step that should have stopped the run.
        self.value, self.step, self.outputs = row[self.metric], step, outputs
        best = {"metric": self.metric, "value": self.value}
        self.manager.save(step, self.saveable(state), {**self.record, "best": best}, force=True)

    def final_outputs(
        self, last: dict | None, jitted: steps.Steps, task: Task, feed: Feed, params: Any
    ) -> dict | None:
        """The eval outputs of the best checkpoint (re-evaluated if it is from an earlier
        session), or of the last evaluation when no best is kept."""
        if self.step is not None:  # This session found the best: its save may be in flight.
            return self.outputs
        saved = None if self.manager is None else self.manager.latest_step()
        if saved is None:
            return last
        restored = self.manager.restore_params(saved, jitted.abstract_saveable.params)
        return evaluate(jitted.eval_step, jitted.combine_params(restored, params), task, feed)[1]


def _run(session: _Session, state: steps.TrainState, start_step: int) -> dict[str, float]:
    """Steps start_step+1 .. num_train_steps with logging, evaluation and saves."""
    config, task, jitted, preemption = (
        session.config,
        session.task,
        session.jitted,
        session.preemption,
    )
    is_main, last = jax.process_index() == 0, config.num_train_steps
    train_feed = Feed(jitted.mesh, session.rules, config.global_batch_size)
    eval_feed = Feed(jitted.mesh, session.rules, config.eval_batch_size)
    writer = MetricsWriter(session.workdir, enabled=is_main)
    progress = ProgressLine(last, enabled=is_main)
    preemption.start(start_step)
    batches = _device_batches(
        task.train_data, start_step, last, train_feed.put, train_feed.rows, config.prefetch_batches
    )
    if preemption.requested_before_start():
        status(f"SIGTERM before the first step: nothing new to save (step {start_step}); exiting.")
        writer.close()
        return {}
    train_step = jitted.train_step
    if start_step < last:
        train_step, batches, seconds = steps.compile_ahead(train_step, state, batches)
        status(f"Compiled the train step in {seconds:.1f}s.")
    guard = _FiniteGuard(config.max_bad_steps, session.checkpointer)
    keeper = _Best(session.best, task.best_metric, session.record, jitted.saveable)
    meter = _Throughput(config, task, start_step)
    progress.start(start_step)
    eval_row, outputs = {}, None
    try:
        for step in range(start_step + 1, last + 1):
            state, metrics = train_step(state, next(batches))
            if step % config.log_every_steps == 0 or step in (1, last):
                guard.check(state)
                row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                row.update(meter.rates(step))
                writer.write(step, row)
                progress.show(step, row)
            side_work_start = time.time()  # Eval and saves are not train-step throughput.
            if task.eval_data is not None and _due(step, config.eval_every_steps, last):
                eval_row, outputs = evaluate(jitted.eval_step, state.params, task, eval_feed)
                writer.write(step, eval_row)
                status(
                    f"eval at step {step}: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in eval_row.items())
                )
                keeper.offer(step, state, eval_row, outputs, guard)
            stop = preemption.should_stop(step)
            if stop:
                logging.warning("Stop requested: saving step %d and exiting.", step)
            if stop or _due(step, config.checkpoint_every_steps, last):
                guard.check(state)  # Never save past a step that should have stopped the run.
                # One save per step.
                session.checkpointer.save(step, jitted.saveable(state), session.record, force=stop)
            if stop:
                return eval_row
            meter.exclude(time.time() - side_work_start)
    finally:
        writer.close()
    if task.eval_data is not None:
        # All processes: collective.
        final = keeper.final_outputs(outputs, jitted, task, eval_feed, state.params)
        if is_main:
            task.on_end(session.workdir, final)
    return eval_row
