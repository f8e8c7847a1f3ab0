"""Dynamic batching: requests queue up and run together, up to `max_batch` items or `max_wait_ms`.

One worker task takes the oldest request, then waits at most `max_wait_ms` for more until the
batch holds `max_batch` items (a request that would overflow it starts the next batch), and runs
the batch in one worker thread (the model call blocks; the event loop keeps accepting). The queue
is bounded (`max_queue` requests): `submit` raises `QueueFull` rather than queue without end.
An exception in a batch fails that batch's requests only. `dynamic=False` runs every request
alone (the baseline of benchmarks/serving_load.py). `close` lets the queued requests finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

QueueFull = asyncio.QueueFull


@dataclasses.dataclass
class _Request:
    items: Sequence[Any]
    future: asyncio.Future


@dataclasses.dataclass
class BatchStats:
    """What one batch was: its items and the tokens the model ran (for the metrics)."""

    items: int
    tokens: int
    seconds: float


class Batcher:
    """`await submit(items)` -> the rows of `run(items)` for those items, batched with others.

    `run(items) -> (rows, tokens)` must return one row per item, in order. `on_batch(stats)` is
    called after each successful batch.
    """

    def __init__(self, run: Callable[[list[Any]], tuple[list[Any], int]], *, max_batch: int,
                 max_wait_ms: float, max_queue: int, dynamic: bool = True,
                 on_batch: Callable[[BatchStats], None] = lambda stats: None):  # fmt: skip
        self._run, self._on_batch = run, on_batch
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.dynamic = dynamic
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue(maxsize=max_queue)
        self._carried: _Request | None = None  # Did not fit the last batch: starts the next.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batch")
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return self._queue.qsize() + (self._carried is not None)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """The rows of `items`; QueueFull at once when `max_queue` requests already wait."""
        request = _Request(items, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(request)
        return await request.future

    async def close(self) -> None:
        """Runs what is queued, then stops the worker."""
        if self._worker is not None:
            await self._queue.put(None)
            await self._worker
        self._pool.shutdown(wait=True)

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._carried is not None:
            request, self._carried = self._carried, None
            return request
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """(the batch that starts with `first`, whether the stop sentinel was met)."""
        batch, size = [first], len(first.items)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while self.dynamic and size < self.max_batch:
            if self._queue.empty() and loop.time() >= deadline:
                break
            try:
                request = await self._next(deadline - loop.time())
            except TimeoutError:
                break
            if request is None:
                return batch, True
            if size + len(request.items) > self.max_batch:
                self._carried = request
                break
            batch.append(request)
            size += len(request.items)
        return batch, False

    async def _work(self) -> None:
        stopping = False
        while not stopping or self._carried is not None:
            first = await self._next(None)
            if first is None:
                break
            batch, stopping = await self._collect(first)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Request]) -> None:
        items = [x for r in batch for x in r.items]
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            rows, tokens = await loop.run_in_executor(self._pool, self._run, items)
        except Exception as e:  # noqa: BLE001 - the batch's requests fail, the server goes on.
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        self._on_batch(BatchStats(len(items), tokens, loop.time() - start))
        at = 0
        for r in batch:
            if not r.future.done():  # The client may have gone away.
                r.future.set_result(rows[at : at + len(r.items)])
            at += len(r.items)
