"""The ASGI app of `pretrain.serve`: predict, health and metrics over a `Predictor`.

    POST /v1/predict  {"texts": [...]} or {"pairs": [[a, b], ...]} -> {"predictions": [...]},
                      each prediction one line of `pretrain.predict`'s output; "truncated" lists
                      the items cut to the largest bucket
    GET  /healthz     200 once warm-up has compiled every bucket, 503 before
    GET  /metrics     Prometheus text (metrics.py)

Errors are `{"error": "<one line>"}`: 400 malformed body, 413 too many items (or, with
`long_texts="reject"`, an item longer than the largest bucket), 503 while warming up or when the
queue is full (with Retry-After), 500 when the batch it ran in failed (the others go on).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

from absl import logging
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pretrain.serving import protocol
from pretrain.serving.batcher import Batcher, QueueFull
from pretrain.serving.inputs import Item
from pretrain.serving.metrics import Metrics
from pretrain.serving.predictor import Predictor

LONG_TEXTS = ("truncate", "reject")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the server batches and what it refuses (the flags of `pretrain.serve`)."""

    max_batch: int = 8  # Items per batch, and per request.
    max_wait_ms: float = 5.0  # How long a batch waits to fill.
    max_queue: int = 64  # Requests waiting; one more is a 503.
    long_texts: str = "truncate"  # An item over the largest bucket: cut it, or 413.
    dynamic: bool = True  # False: every request runs alone.
    retry_after_s: int = 1


def _error(status: int, reason: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _too_long(predictor: Predictor, items: list[Item], settings: Settings) -> list[int]:
    """Indices of items longer than the largest bucket; RequestError 413 if they are refused."""
    counts = predictor.token_counts(items)
    if counts is None:
        return []
    long = [i for i, n in enumerate(counts) if n > predictor.max_length]
    if long and settings.long_texts == "reject":
        i = long[0]
        raise protocol.RequestError(
            413, f"item {i} has {counts[i]} tokens, more than the largest bucket "
            f"({predictor.max_length}): shorten it, or serve with --long_texts=truncate.",
        )  # fmt: skip
    return long


async def _answer(request: Request, predictor: Predictor, settings: Settings,
                  state: dict[str, Any]) -> JSONResponse:  # fmt: skip
    """The response to one POST /v1/predict (see the module docstring)."""
    if state["status"] != "ready":
        return _error(503, f"the model is not ready ({state['status']}).", settings.retry_after_s)
    try:
        items = protocol.parse_predict(await request.body(), predictor.accepts,
                                       settings.max_batch)  # fmt: skip
        truncated = _too_long(predictor, items, settings)
        rows = await state["batcher"].submit(items)
    except protocol.RequestError as e:
        return _error(e.status, e.reason)
    except QueueFull:
        return _error(503, f"the queue is full ({settings.max_queue} requests): retry later.",
                      settings.retry_after_s)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - this request's batch failed; the server goes on.
        logging.exception("A batch failed.")
        reason = " ".join(str(e).split()) or "no message"
        return _error(500, f"the batch of this request failed: {type(e).__name__}: {reason}")
    if predictor.name == "qa":  # Question ids are the positions in the request.
        rows = [{**row, "id": str(i)} for i, row in enumerate(rows)]
    body: dict[str, Any] = {"predictions": rows}
    if truncated:
        body["truncated"] = truncated
    return JSONResponse(body)


def create_app(predictor: Predictor, settings: Settings = Settings()) -> FastAPI:
    """The app; its lifespan starts the batcher and the warm-up, and drains on shutdown."""
    if settings.long_texts not in LONG_TEXTS:
        raise ValueError(f"long_texts={settings.long_texts!r}: use one of {LONG_TEXTS}.")
    state: dict[str, Any] = {"status": "warming up", "batcher": None}
    metrics = Metrics(depth=lambda: state["batcher"].depth if state["batcher"] else 0)

    async def warm_up() -> None:
        try:
            await asyncio.to_thread(predictor.warm_up, settings.max_batch)
        except Exception:  # noqa: BLE001 - reported by /healthz and the log; serving never starts.
            logging.exception("Warm-up failed.")
            state["status"] = "warm-up failed"
            return
        metrics.ready()
        state["status"] = "ready"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = Batcher(predictor.predict, max_batch=settings.max_batch,
                          max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                          dynamic=settings.dynamic, on_batch=metrics.observe_batch)  # fmt: skip
        batcher.start()
        state["batcher"] = batcher
        warming = asyncio.create_task(warm_up())
        yield
        await warming
        await batcher.close()  # The server accepts nothing now; what is queued still runs.

    app = FastAPI(title="pretrain.serve", lifespan=lifespan)

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        start = time.perf_counter()
        metrics.in_flight.inc()
        try:
            response = await _answer(request, predictor, settings, state)
        finally:
            metrics.in_flight.dec()
        metrics.observe_request(response.status_code, time.perf_counter() - start)
        return response

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ready = state["status"] == "ready"
        body = {"status": state["status"], "task": predictor.name, "buckets": predictor.buckets}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
