"""Orbax checkpoints: async saves, restore into any sharding, fall back past broken ones.

Layout: `WORKDIR/checkpoints/<step>/` with two items, `state` (the train state pytree) and
`config` (the run's config as JSON, so tools such as fine-tuning and export know the model size).
Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves no folder that `all_steps()` would pick.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (mismatched model, unreadable)."""


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the restore policy of this project."""

    def __init__(self, directory: str | epath.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "config")
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps(read=True))

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, config_json: dict[str, Any], force: bool = False) -> bool:
        """Starts an async save of `state` at `step` (returns at once; see `wait`)."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json)
            ),
            force=force,
        )

    def read_config(self, step: int) -> dict[str, Any]:
        """The config JSON saved with `step`."""
        path = self.directory / str(step) / "config" / "metadata"
        if path.exists():
            return json.loads(path.read_text())
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return dict(restored["config"])

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restores `step` into the shapes, dtypes and shardings of `abstract_state`."""
        check_shapes(self._manager.item_metadata(step)["state"], abstract_state, step)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)),
        )
        return restored["state"]

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Restores only the `params` of the train state saved at `step`, into the shapes, dtypes
        and shardings of `abstract_params`; the optimizer state is never read (export tools)."""
        item = {"params": abstract_params}
        check_shapes(self._manager.item_metadata(step)["state"], item, step)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                )
            ),
        )
        return restored["state"]["params"]

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
        """Newest checkpoint that restores; warns about and skips broken ones (never deletes)."""
        for step in reversed(self.all_steps()):
            try:
                return self.restore(step, abstract_state), step
            except CheckpointError:
                raise  # A model/config mismatch: falling back to older steps would not help.
            except Exception as e:  # noqa: BLE001 - any read failure means "try the previous one"
                logging.warning(
                    "Checkpoint %s is unreadable (%s: %s); falling back to the previous one. "
                    "It is left on disk for inspection.",
                    self.directory / str(step),
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
        return None

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def check_shapes(saved_metadata: Any, abstract_state: Any, step: int) -> None:
    """Raises CheckpointError naming the first parameter whose saved shape differs."""
    if saved_metadata is None:
        return
    saved = dict(jax.tree_util.tree_flatten_with_path(_shape_tree(saved_metadata))[0])
    wanted = jax.tree_util.tree_flatten_with_path(_shape_tree(abstract_state))[0]
    saved_by_name = {_path_name(p): s for p, s in saved.items()}
    for path, shape in wanted:
        name = _path_name(path)
        if name in saved_by_name and saved_by_name[name] != shape:
            raise CheckpointError(
                f"checkpoint step {step} does not match the model: {name} has shape "
                f"{saved_by_name[name]} in the checkpoint but {shape} in the config; "
                f"use the model config the checkpoint was trained with, or a new --workdir."
            )


def _shape_tree(tree: Any) -> Any:
    # Shapes as strings: a tuple would itself be flattened as a pytree.
    return jax.tree.map(lambda x: str(tuple(getattr(x, "shape", ()))), tree)


def _path_name(path: tuple[Any, ...]) -> str:
    parts = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
        if name is not None and name != "value":
            parts.append(str(name))
    return "/".join(parts)
