"""Serves a fine-tuned model over HTTP, with dynamic batching and Prometheus metrics.

    python -m pretrain.serve --model=SERVE_DIR|FT_DIR --host=127.0.0.1 --port=8000 \
        [--max_batch=8] [--max_wait_ms=5] [--max_queue=64] [--long_texts=truncate|reject]

SERVE_DIR is a `pretrain.export_serving` artifact; a fine-tuning workdir is exported in memory
first (--buckets, --batch_size as for the export). `POST /v1/predict`, `GET /healthz`,
`GET /metrics`: see pretrain/serving/app.py and docs/serving.md. --port=0 picks a free port;
the first stdout line names the address. SIGTERM (or Ctrl-C) stops accepting, answers what was
accepted, then exits 0.
"""

import signal
import socket

import uvicorn
from absl import flags

from pretrain import command
from pretrain.serving import app as app_lib
from pretrain.serving import artifact
from pretrain.training.errors import ConfigError

_MODEL = flags.DEFINE_string("model", None, "A serving artifact or a fine-tuning workdir.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: a free one).")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 8, "Items per batch, and per request.")
_MAX_WAIT_MS = flags.DEFINE_float("max_wait_ms", 5.0, "How long a batch waits to fill.")
_MAX_QUEUE = flags.DEFINE_integer("max_queue", 64, "Requests that may wait; more get 503.")
_LONG_TEXTS = flags.DEFINE_enum(
    "long_texts",
    "truncate",
    app_lib.LONG_TEXTS,
    "An item over the largest bucket: cut it, or answer 413.",
)
_BATCHING = flags.DEFINE_boolean("batching", True, "Batch requests together (off: one by one).")
_BUCKETS = flags.DEFINE_string("buckets", "", "FT_DIR only: sequence lengths to export.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "FT_DIR only: rows per model call.")
flags.mark_flags_as_required(["model"])


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}): choose another "
                          "--port or --host.") from None  # fmt: skip
    return sock


def _serve() -> None:
    for name, value in (("max_batch", _MAX_BATCH.value), ("max_queue", _MAX_QUEUE.value)):
        if value < 1:
            raise ConfigError(f"--{name}={value} must be at least 1.")
    if _MAX_WAIT_MS.value < 0:
        raise ConfigError(f"--max_wait_ms={_MAX_WAIT_MS.value} must be >= 0.")
    sock = _bind(_HOST.value, _PORT.value)
    predictor = artifact.open_model(_MODEL.value, _BUCKETS.value, _BATCH_SIZE.value)
    settings = app_lib.Settings(
        max_batch=_MAX_BATCH.value, max_wait_ms=_MAX_WAIT_MS.value, max_queue=_MAX_QUEUE.value,
        long_texts=_LONG_TEXTS.value, dynamic=_BATCHING.value,
    )  # fmt: skip
    host, port = sock.getsockname()[:2]
    print(f"Serving {_MODEL.value} ({predictor.name}) on http://{host}:{port}", flush=True)
    config = uvicorn.Config(app_lib.create_app(predictor, settings), log_level="warning")
    # uvicorn drains on SIGTERM / SIGINT, then re-raises the signal to the handler it found:
    # let that be a no-op, so a drained server exits 0 (not -15, nor a KeyboardInterrupt).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    command.run(_serve)
