"""Who may write a workdir: its kind, one writer at a time, and what a resume may change.

A run claims its workdir before it writes anything:

1. **Kind.** `WORKDIR/workdir.json` records what made the workdir (`pretraining` or `finetuning`,
   the architecture, the task). Another command refuses it with one line: fine-tuning into a
   pretraining workdir would overwrite its config and mix two trees of parameters.
2. **Config.** A workdir with checkpoints is resumed only with a compatible config. Keys that fix
   what the checkpoints and the data mean (model shapes, tokenizer, seed, data, batch size) must
   not change: the run refuses, listing every difference. Keys that may change (step count,
   learning rate and the rest of the optimizer's schedule, cadences, mesh, dtype) are applied with
   one warning listing old -> new. `config.json` holds the newest config; every earlier one is
   appended to `config_history.jsonl`.
3. **One writer.** `WORKDIR/writer.lock` names the holder (host, pid, start time). A second
   writer is refused at once with one line naming it. A lock whose holder is dead is taken over:
   on the same host when its pid is gone (or reused by another process), from another host when
   its lease has expired; the holder renews the lease every `LEASE_SECONDS / 4`.

In a multi-process run, process 0 claims; every process reads the same files, so all of them
refuse the same bad config, and the lock's outcome is shared before any of them goes on.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import socket
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from data_pipeline import files
from pretrain.training.errors import WorkdirError

KIND_FILE = "workdir.json"
LOCK_FILE = "writer.lock"
HISTORY_FILE = "config_history.jsonl"
CONFIG_FILE = "config.json"
LEASE_SECONDS = 120.0
# Keys a resumed run may change (fnmatch patterns over dotted keys); any other change refuses.
RESUMABLE_KEYS = (
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "eval_batch_size",
    "max_eval_batches",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "max_bad_steps",
    "prefetch_batches",
    "dtype",
    "grad_accum_steps",
    "best_metric",
    "classifier_dropout",
    "optimizer.[!n]*",  # Everything of the optimizer but its name (which fixes its state).
    "mesh.*",
    "benchmark.*",
    "model.attention_impl",
    "model.splash_block_*",
    "model.remat_policy",
    "model.hidden_dropout_prob",
    "model.attention_probs_dropout_prob",
    "data.eval_files",
    "data.eval_file",
    "data.verify_shards",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'optimizer.learning_rate': 1e-4, ...} of a nested dict (JSON-normalized values)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for the keys both configs have and that differ."""
    old, now = _flat(saved), _flat(new)
    return {k: (old[k], now[k]) for k in sorted(old.keys() & now.keys()) if old[k] != now[k]}


def _resumable(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)


def read_kind(workdir: str | epath.PathLike) -> dict[str, Any] | None:
    """The workdir's record of what made it, or None for a folder no command has claimed.

    Workdirs made before the record existed are recognized by their config.json.
    """
    path = epath.Path(workdir)
    if (path / KIND_FILE).exists():
        return json.loads((path / KIND_FILE).read_text())
    if not (path / CONFIG_FILE).exists():
        return None
    saved = json.loads((path / CONFIG_FILE).read_text())
    kind = "finetuning" if "init_from" in saved else "pretraining"
    return {
        "kind": kind,
        "arch": saved.get("model", {}).get("arch", "bert"),
        "task": saved.get("task"),
    }


def describe(kind: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The workdir record a run of `kind` with `config` writes."""
    return {"kind": kind, "arch": config.model.get("arch", "bert"), "task": config.get("task")}


_COMMANDS = {
    "pretraining": "python -m pretrain.train",
    "finetuning": "python -m pretrain.finetune",
    "quantized": "python -m pretrain.quantize",
}


def check_kind(workdir: epath.Path, wanted: dict[str, Any]) -> None:
    """WorkdirError when the workdir was made by another kind of run (nothing is changed)."""
    found = read_kind(workdir)
    if found is None:
        return
    if found["kind"] != wanted["kind"]:
        fix = (
            "fine-tune into a new --workdir with --config.init_from=" + str(workdir)
            if found["kind"] == "pretraining"
            else "use a new --workdir"
        )
        raise WorkdirError(
            f"{workdir} is a {found['kind']} workdir (made by {_COMMANDS[found['kind']]}), not a "
            f"{wanted['kind']} one: {fix}."
        )
    for key in ("arch", "task"):
        if found.get(key) and wanted.get(key) and found[key] != wanted[key]:
            raise WorkdirError(
                f"{workdir} holds a {found['kind']} run with {key}={found[key]!r}, not "
                f"{wanted[key]!r}: use a new --workdir (or the {key} it was made with)."
            )


def check_resume(workdir: epath.Path, config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """The resumable changes against the saved config (WorkdirError for any other change).

    A workdir whose only checkpoint is step 0 (an imported model) has not trained yet: its data,
    seed and batch size are still the new run's to choose; its model shapes are not.
    """
    path = workdir / CONFIG_FILE
    folder = workdir / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    if not path.exists() or not steps:
        return {}
    changes = config_changes(json.loads(path.read_text()), _as_json(config))
    trained = max(steps) > 0
    fixed = {
        k: v
        for k, v in changes.items()
        if not _resumable(k) and (trained or k.startswith("model."))
    }
    if fixed:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in fixed.items())
        raise WorkdirError(
            f"{workdir} holds checkpoints of a run with another config, and these keys cannot "
            f"change on resume: {listed}. Rerun with the saved values (in {path}), or use a new "
            "--workdir."
        )
    return changes


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (/proc), so a reused pid is not taken for the holder."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return time.time() < float(holder.get("lease_until", 0))
    pid = int(holder.get("pid", -1))
    start = process_start(pid)
    if start is not None:
        return start == holder.get("pid_start")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass
class WriterLock:
    """The lock a run holds on its workdir; `release()` at the end of the run."""

    path: epath.Path
    record: dict[str, Any]
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def _write(self, exclusive: bool) -> bool:
        data = json.dumps(self.record, indent=1).encode()
        if "://" in os.fspath(self.path):  # Object stores: no exclusive create; best effort.
            if exclusive and self.path.exists():
                return False
            self.path.write_bytes(data)
            return True
        if not exclusive:
            files.write_bytes(self.path, data)
            return True
        try:
            fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4):
            self.record["lease_until"] = time.time() + LEASE_SECONDS
            try:
                self._write(exclusive=False)
            except OSError as e:  # A transient store error: the next renewal tries again.
                logging.warning("Could not renew the lease of %s: %s", self.path, e)

    def acquire(self) -> None:
        for _ in range(3):
            if self._write(exclusive=True):
                threading.Thread(target=self._renew, daemon=True).start()
                return
            try:
                holder = json.loads(self.path.read_text())
            except (OSError, ValueError):  # Half-written by a writer killed at that moment.
                holder = {}
            if holder and _alive(holder):
                raise WorkdirError(
                    f"{self.path.parent} is in use by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, started {holder.get('started')}): wait for it to "
                    "finish or stop it, or use another --workdir."
                )
            logging.warning("Taking over %s from a writer that is gone: %s", self.path, holder)
            stale = self.path.parent / f"{LOCK_FILE}.stale-{os.getpid()}"
            try:
                self.path.rename(stale)
                stale.unlink()
            except OSError:
                pass  # Another starter moved it first; try again.
        raise WorkdirError(f"could not take the lock {self.path}: another run keeps taking it.")

    def release(self) -> None:
        self._stop.set()
        try:
            if json.loads(self.path.read_text()).get("token") == self.record["token"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass  # Already gone: nothing to release.


def _lock_record(command: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "lease_until": time.time() + LEASE_SECONDS,
        "token": f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}",
    }


def _all_agree(ok: bool, error: str) -> None:
    """Raises `error` on every process unless process 0 (which claims) succeeded."""
    if jax.process_count() > 1:
        ok = bool(np.asarray(multihost_utils.broadcast_one_to_all(np.array(ok))))
    if not ok:
        raise WorkdirError(error)


def claim(workdir: epath.Path, kind: str, config: ml_collections.ConfigDict) -> WriterLock | None:
    """Checks the workdir's kind and config, takes its lock, and records this run's config.

    Returns the lock (process 0) to release when the run ends; raises WorkdirError (on every
    process) before anything is written when the workdir is not this run's to write.
    """
    wanted = describe(kind, config)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder: pick another --workdir.")
    check_kind(workdir, wanted)
    changes = check_resume(workdir, config)
    lock, error = None, "process 0 could not claim the workdir (see its error)"
    if jax.process_index() == 0:
        _make_folder(workdir)
        lock = WriterLock(workdir / LOCK_FILE, _lock_record(_COMMANDS[kind]))
        try:
            lock.acquire()
        except WorkdirError as e:
            _all_agree(False, str(e))
        _record(workdir, wanted, config, changes)
    _all_agree(True, error)
    return lock


def _make_folder(workdir: epath.Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError) as e:
        raise WorkdirError(
            f"--workdir={workdir} cannot be created: {e.filename or workdir} is a file, not a "
            "folder; pick another --workdir."
        ) from None
    except PermissionError:
        raise WorkdirError(
            f"--workdir={workdir} cannot be created: permission denied; pick a writable --workdir."
        ) from None


def record_kind(workdir: epath.Path, wanted: dict[str, Any]) -> None:
    """Writes the workdir's kind record (`describe`) unless it has one."""
    if not (workdir / KIND_FILE).exists():
        record = {**wanted, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        files.write_text(workdir / KIND_FILE, json.dumps(record, indent=2) + "\n")


def _record(
    workdir: epath.Path, wanted: dict[str, Any], config: ml_collections.ConfigDict,
    changes: dict[str, tuple],
) -> None:  # fmt: skip
    """Writes the kind record (first claim), keeps the replaced config, writes the new one."""
    record_kind(workdir, wanted)
    config_path = workdir / CONFIG_FILE
    new_text = config.to_json_best_effort(indent=2)
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != json.loads(new_text):
            history = workdir / HISTORY_FILE
            entry = {"replaced": time.strftime("%Y-%m-%d %H:%M:%S"), "config": old}
            earlier = history.read_text() if history.exists() else ""
            files.write_text(history, earlier + json.dumps(entry) + "\n")
    if changes:
        logging.warning(
            "Resuming with a changed config: %s (the previous config is kept in %s).",
            "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()),
            HISTORY_FILE,
        )
    files.write_text(config_path, new_text)
