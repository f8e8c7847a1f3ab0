"""Where metrics go: `WORKDIR/metrics.jsonl`, TensorBoard events, and a one-line progress log.

Only process 0 writes (the others get a writer that does nothing), so a multi-host run produces
one metrics file. A resumed run appends to the same file.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from etils import epath

from data_pipeline import files


def _jsonable(value: Any) -> Any:
    value = float(value) if hasattr(value, "__float__") and not isinstance(value, int) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf; null marks the bad value.
    return value


def status(message: str) -> None:
    """A human-readable status line on stderr, from process 0 only."""
    import jax

    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


class MetricsWriter:
    """Appends rows to metrics.jsonl and TensorBoard; prints progress lines."""

    def __init__(self, workdir: str | epath.PathLike, enabled: bool = True):
        self.enabled = enabled
        self._path = epath.Path(workdir) / "metrics.jsonl"
        self._tb = None
        # Object stores (gs://, s3://) cannot append to a file: there the rows are kept here and
        # the file is rewritten whole at each write (one row per log_every_steps: small).
        self._text: str | None = None
        if enabled:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if "://" in str(self._path):
                self._text = self._path.read_text() if self._path.exists() else ""
            from tensorboardX import SummaryWriter  # Imported lazily: process 0 only.

            self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One JSON row `{"step": step, **scalars}` plus TensorBoard scalars."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
        line = json.dumps(row) + "\n"
        if self._text is None:
            with self._path.open("a") as f:
                f.write(line)
        else:
            self._text += line
            files.write_text(self._path, self._text)
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class ProgressLine:
    """`step 120/600 | loss 7.12 | mlm_acc 0.081 | 15.2k tok/s | eta 3m10s` on stderr."""

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total_steps = total_steps
        self.enabled = enabled
        self._start_time: float | None = None
        self._start_step = 0

    def start(self, step: int) -> None:
        self._start_time = time.time()
        self._start_step = step

    def show(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled or self._start_time is None:
            return
        done = step - self._start_step
        elapsed = time.time() - self._start_time
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.total_steps}"]
        for key, label, fmt in (
            ("loss", "loss", ".4f"),
            ("mlm_accuracy", "mlm_acc", ".3f"),
            ("tokens_per_sec", "tok/s", ".0f"),
        ):
            if key in metrics and metrics[key] is not None:
                parts.append(f"{label} {format(metrics[key], fmt)}")
        parts.append(f"eta {_duration(eta)}")
        print(" | ".join(parts), file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
