"""Turns SIGTERM into "save now and exit 0", agreed by every process on the same step."""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Created first thing in a run, so a SIGTERM during data preparation is not lost.

    One process: a Python SIGTERM handler sets a flag, read after each step. Several processes:
    JAX's preemption sync manager (started by `jax.distributed.initialize`) catches SIGTERM on
    whichever process gets it and, in the background, has all processes agree through the
    coordination service on the first step that none has passed yet;
    `reached_preemption_sync_point` is True at that step on every process. Per step this costs
    a mutex, not a host round trip. No Python handler is installed then: it would replace the
    manager's C++ one.
    """

    def __init__(self) -> None:
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
