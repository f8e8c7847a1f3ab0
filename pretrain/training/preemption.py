"""Turns SIGTERM and Ctrl-C into "save now and exit 0", agreed by every process on one step."""

from __future__ import annotations

import os
import signal
import sys
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Created first thing in a run, so a signal during data preparation is not lost.

    SIGTERM (a scheduler's preemption notice), one process: a Python handler sets a flag, read
    after each step. Several processes: JAX's preemption sync manager (started by
    `jax.distributed.initialize`) catches SIGTERM on whichever process gets it and, in the
    background, has all processes agree through the coordination service on the first step that
    none has passed yet; `reached_preemption_sync_point` is True at that step on every process.
    Per step this costs a mutex, not a host round trip. No Python SIGTERM handler is installed
    then: it would replace the manager's C++ one.

    Ctrl-C (SIGINT) is SIGTERM for people at a keyboard: the first one saves the current step and
    exits 0 (before the first step, with nothing to save, it stops at once); a second one stops
    at once, leaving the last complete checkpoint as it is.
    """

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._multi_process = jax.process_count() > 1
        self._started = False
        self._interrupts = 0
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Signals reach the main thread only (a run inside a worker thread).
        if not self._multi_process:
            self._install(signal.SIGTERM, lambda *_: self._requested.set())
        self._install(signal.SIGINT, self._on_interrupt)

    def _install(self, signum: int, handler) -> None:
        self._previous[signum] = signal.signal(signum, handler)

    def _on_interrupt(self, *_) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            print(
                "\nSecond Ctrl-C: stopping at once; the newest complete checkpoint is kept.",
                file=sys.stderr,
                flush=True,
            )
            os._exit(130)  # No cleanup: a save in flight stays an ignored temporary folder.
        if not self._started:
            print("\nCtrl-C before the first step: nothing to save; stopping.", file=sys.stderr)
            raise SystemExit(0)
        print(
            "\nCtrl-C: saving the current step, then stopping (Ctrl-C again stops at once).",
            file=sys.stderr,
            flush=True,
        )
        if self._multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # The preemption manager syncs every process.
        else:
            self._requested.set()

    def start(self, start_step: int) -> None:
        """Called once the starting step is known (after restore)."""
        self._started = True
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

    def close(self) -> None:
        """Puts back the handlers that were there before the run."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
