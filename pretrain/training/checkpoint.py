"""Orbax checkpoints: async saves, restore into any sharding, fall back past broken ones.

Layout: `WORKDIR/checkpoints/<step>/` with two items, `state` (the train state pytree) and
`config` (the run's config as JSON, so tools such as fine-tuning and export know the model size).
Orbax writes each step into a temporary folder (`<step>.orbax-checkpoint-tmp`) and renames it
when complete, so a run killed mid-save leaves no folder that `all_steps()` would pick; saving
that step again replaces the leftover. A complete checkpoint that no longer reads (truncated or
garbled files) is skipped and, once an older one restores, renamed to `<step>.corrupt-<time>`:
kept for inspection, out of the way of the step this run will save again. On several processes
a step counts as readable only if it restores on every one of them.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from pretrain.models.params import path_name
from pretrain.training.errors import CheckpointError


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the restore policy of this project."""

    def __init__(
        self,
        directory: str | epath.PathLike,
        keep: int = 3,
        async_save: bool = True,
        cleanup_tmp: bool = False,
    ):
        """`cleanup_tmp`: delete the half-written step folders a killed run left behind; only for
        the run that writes into `directory` (a reader could delete a save in progress)."""
        self.directory = epath.Path(directory)
        self._in_flight: int | None = None  # Step of the async save not yet known to be committed.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=cleanup_tmp,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "config")
        )

    def all_steps(self) -> list[int]:
        """Complete checkpoints on disk (read now, not cached)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, config_json: dict[str, Any], force: bool = False) -> bool:
        """Starts an async save of `state` at `step` (returns at once; see `wait`).

        Raises CheckpointError when this save, or the previous async one, fails (disk full, no
        permission); the complete checkpoints already on disk stay intact.
        """
        self.wait()  # Orbax waits for the previous save anyway; this names its step on failure.
        with self._save_errors(step):
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json)
                ),
                force=force,
            )
        if saved:
            self._in_flight = step
        return saved

    def read_config(self, step: int) -> dict[str, Any]:
        """The config JSON saved with `step`."""
        path = self.directory / str(step) / "config" / "metadata"
        if path.exists():
            return json.loads(path.read_text())
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return dict(restored["config"])

    def _saved_state_metadata(self, step: int) -> Any:
        # Read with a fresh handler: the manager knows the item's type only after a first restore.
        return ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restores `step` into the shapes, dtypes and shardings of `abstract_state`.

        Each process reads its own shards through the item's handler, without the manager's
        closing barrier: a process whose read fails must not leave the others waiting there
        (`restore_latest` then has every process agree on the outcome).
        """
        check_shapes(self._saved_state_metadata(step), abstract_state, step)
        return ocp.StandardCheckpointHandler().restore(
            self.directory / str(step) / "state", args=ocp.args.StandardRestore(abstract_state)
        )

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Restores only the `params` of the train state saved at `step`, into the shapes, dtypes
        and shardings of `abstract_params`; the optimizer state is never read (orbax partial
        restore). Read through a fresh handler: the manager's own one for the item may be a
        StandardCheckpointHandler (after a save), which cannot restore part of a tree."""
        item = {"params": abstract_params}
        check_shapes(self._saved_state_metadata(step), item, step)
        handler = ocp.PyTreeCheckpointHandler()
        try:
            restored = handler.restore(
                self.directory / str(step) / "state",
                args=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                ),
            )
        finally:
            handler.close()
        return restored["params"]

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
        """(state, step) of the newest checkpoint that restores; None when there is none.

        A checkpoint that fails to read is skipped; once an older one restores, each skipped one
        is renamed to `<step>.corrupt-<time>` with a warning (never deleted), so this run can save
        that step again. Raises CheckpointError when checkpoints exist but none restores (falling
        back to a fresh start would silently throw the run away), or when the model's shapes
        differ from the checkpoint's (an older checkpoint would not match either).
        """
        broken: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            state, failure = None, ""
            try:
                state = self.restore(step, abstract_state)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means "try the previous one"
                failure = _reason(e)
                _silence_abandoned_reads()
            # Every process reads its own shards: all must agree to use a step, or they would
            # resume from different steps (and then wait forever in different collectives).
            failed = _processes_where(bool(failure))
            if failed:
                broken.append((step, failure or f"unreadable on process {failed}"))
                continue
            for bad_step, reason in broken:
                moved = self._set_aside(bad_step)
                logging.warning(
                    "Checkpoint %s is unreadable (%s); moved it to %s and resumed from step %d.",
                    self.directory / str(bad_step),
                    reason,
                    moved.name,
                    step,
                )
            return state, step
        if broken:
            step, reason = broken[0]
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored; the newest, step {step}, "
                f"fails with: {reason}. Resume from a copy of the workdir made before the "
                "damage, or start a new run with a new --workdir."
            )
        return None

    def _set_aside(self, step: int) -> epath.Path:
        """Renames the folder of `step` out of orbax's view; returns its new path."""
        target = self.directory / f"{step}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self._manager.reload()
        return target

    def wait(self) -> None:
        """Blocks until pending async saves are committed; CheckpointError if one failed."""
        if self._in_flight is not None:
            with self._save_errors(self._in_flight):
                self._manager.wait_until_finished()
            self._in_flight = None

    def close(self) -> None:
        """Waits for pending saves (CheckpointError if one failed), then frees orbax's threads."""
        try:
            self.wait()
        except CheckpointError:
            with contextlib.suppress(Exception):  # Orbax may raise the reported failure again.
                self._manager.close()
            raise
        self._manager.close()

    @contextlib.contextmanager
    def _save_errors(self, step: int) -> Iterator[None]:
        """Turns a failed write into one line naming the failure.

        The OS raises OSError; tensorstore, under orbax 0.12, reports the same I/O failures as
        ValueError with the OS message inside, so both are caught here and nowhere else.
        """
        try:
            yield
        except (OSError, ValueError) as e:
            self._in_flight = None
            reason = _reason(e)
            complete = ", ".join(map(str, self.all_steps())) or "none"
            raise CheckpointError(
                f"could not save checkpoint step {step} in {self.directory}: {reason}. "
                f"{_fix_for(reason)}Rerun to resume from the newest complete checkpoint "
                f"(complete steps: {complete})."
            ) from e


def _fix_for(reason: str) -> str:
    """The fix for a failed write when its cause says what it is; nothing when it does not."""
    lowered = reason.lower()
    if "no space left" in lowered or "file too large" in lowered or "quota" in lowered:
        return "Free disk space (or lower config.keep_checkpoints). "
    if "permission denied" in lowered or "read-only file system" in lowered:
        return "Make the workdir writable. "
    return ""


def check_shapes(saved_metadata: Any, abstract_state: Any, step: int) -> None:
    """Raises CheckpointError naming the first parameter whose saved shape differs."""
    if saved_metadata is None:
        return
    saved = dict(jax.tree_util.tree_flatten_with_path(_shape_tree(saved_metadata))[0])
    wanted = jax.tree_util.tree_flatten_with_path(_shape_tree(abstract_state))[0]
    saved_by_name = {path_name(p): s for p, s in saved.items()}
    for path, shape in wanted:
        name = path_name(path)
        if name in saved_by_name and saved_by_name[name] != shape:
            raise CheckpointError(
                f"checkpoint step {step} does not match the model: {name} has shape "
                f"{saved_by_name[name]} in the checkpoint but {shape} in the config; "
                f"use the model config the checkpoint was trained with, or a new --workdir."
            )


def _silence_abandoned_reads() -> None:
    """Keeps the reads a failed restore abandoned from printing tracebacks when collected.

    When one array fails to read, orbax leaves the coroutines reading the others unfinished;
    Python reports each one's exception ("Exception ignored in ...") whenever it is collected,
    often at exit, after the one-line error a user should see last.
    """
    previous = sys.unraisablehook
    if getattr(previous, "silences_abandoned_reads", False):
        return

    def hook(unraisable: Any) -> None:
        if "_read_array_index" not in repr(unraisable.object):
            previous(unraisable)

    hook.silences_abandoned_reads = True
    sys.unraisablehook = hook


def _processes_where(flag: bool) -> list[int]:
    """The indices of the processes where `flag` is true (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return [0] if flag else []
    flags = multihost_utils.process_allgather(np.array([flag]))
    return [int(i) for i in np.flatnonzero(np.asarray(flags).reshape(-1))]


def _reason(error: BaseException) -> str:
    """First line of the innermost cause, which names the file and the failure (tensorstore wraps
    it in a message about array indices). A long line keeps its end, where the OS error is."""
    while error.__cause__ is not None:
        error = error.__cause__
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(line) > 300:
        line = f"{line[:140]} ... {line[-150:]}"
    return f"{type(error).__name__}: {line}"


def _shape_tree(tree: Any) -> Any:
    # Shapes as strings: a tuple would itself be flattened as a pytree.
    return jax.tree.map(lambda x: str(tuple(getattr(x, "shape", ()))), tree)
