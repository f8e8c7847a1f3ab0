"""The server's Prometheus metrics, in a registry of their own (one per app).

requests and errors by status code, request latency, batch size (items) and queue depth, tokens
run and the last batch's tokens per second, requests in flight, and XLA compilations since
warm-up (JAX reports each through `jax.monitoring`; it stays 0 while serving).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import jax
import prometheus_client as prom

from pretrain.serving.batcher import BatchStats

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = 0
_listening = threading.Lock()
_registered = False


def _count_compile(event: str, duration: float, **kwargs: object) -> None:
    global _compiles
    if event == _COMPILE_EVENT:
        _compiles += 1


def compiles() -> int:
    """XLA compilations in this process since the first server was made."""
    global _registered
    with _listening:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_count_compile)
            _registered = True
    return _compiles


class Metrics:
    """The collectors; `render()` is the text of GET /metrics."""

    def __init__(self, depth: Callable[[], int]):
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("serving_requests", "Requests by status code.", ["code"],
                                     registry=r)  # fmt: skip
        self.errors = prom.Counter("serving_errors", "Failed requests by status code.", ["code"],
                                   registry=r)  # fmt: skip
        self.latency = prom.Histogram(
            "serving_request_latency_seconds", "Time from request to response.", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.batch_size = prom.Histogram(
            "serving_batch_size", "Items per model batch.", registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )  # fmt: skip
        self.tokens = prom.Counter("serving_tokens", "Real tokens run by the model.", registry=r)
        self.tokens_per_second = prom.Gauge(
            "serving_tokens_per_second", "Tokens per second of the last batch.", registry=r
        )
        self.in_flight = prom.Gauge("serving_requests_in_flight", "Requests being answered.",
                                    registry=r)  # fmt: skip
        prom.Gauge("serving_queue_depth", "Requests waiting for a batch.",
                   registry=r).set_function(depth)  # fmt: skip
        self._compiles_at_ready = compiles()
        since = prom.Gauge("serving_compiles_since_ready", "XLA compilations since warm-up.",
                           registry=r)  # fmt: skip
        since.set_function(lambda: compiles() - self._compiles_at_ready)

    def ready(self) -> None:
        """Warm-up is over: count compilations from here."""
        self._compiles_at_ready = compiles()

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.items)
        self.tokens.inc(stats.tokens)
        if stats.seconds > 0:
            self.tokens_per_second.set(stats.tokens / stats.seconds)

    def observe_request(self, code: int, seconds: float) -> None:
        self.requests.labels(code=str(code)).inc()
        if code >= 400:
            self.errors.labels(code=str(code)).inc()
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return prom.generate_latest(self.registry)
