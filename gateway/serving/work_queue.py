"""`WorkQueue`: the one queue-and-worker loop behind the micro-batcher and the shadow mirror.

Items carry rows; one worker task takes what is queued, up to `max_rows` rows (always at least one
item), and hands the batch to `handle`. The loop is work-conserving: when the worker is free and
something is queued, it runs now; items accumulate only while a batch is being handled, so batches
grow exactly as fast as load does. A user of the queue may still hold a batch back for a bounded
time (`gather`), which the batcher does only when its measurements say waiting pays.

`handle` must not raise; if it does anyway, the exception is logged and `on_error` gets the batch,
and the worker goes on. `stop()` lets the worker handle what is queued, then ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("inferloop.gateway")


class WorkQueue(Generic[T]):
    def __init__(self, name: str, rows_of: Callable[[T], int], max_rows: int) -> None:
        self.name = name
        self.max_rows = max_rows
        self.queued_rows = 0
        self.closing = False
        self._rows_of = rows_of
        self._items: deque[T] = deque()
        # what the idle worker awaits: a bare future, not an asyncio.Event, whose wait() and set() are
        # Python code run for every request at low load
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def running(self) -> bool:
        return self._task is not None

    def put(self, item: T) -> None:
        self._items.append(item)
        self._wake_worker()
        self.queued_rows += self._rows_of(item)

    def _wake_worker(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def take(self) -> list[T]:
        """The oldest items, up to `max_rows` rows in all (at least one item, however large)."""
        first = self._items.popleft()
        batch, rows = [first], self._rows_of(first)
        while self._items and rows + self._rows_of(self._items[0]) <= self.max_rows:
            item = self._items.popleft()
            rows += self._rows_of(item)
            batch.append(item)
        self.queued_rows -= rows
        return batch

    # -- the worker -----------------------------------------------------------------------------
    def start(self, handle: Callable[[list[T]], Awaitable[None]], *,
              on_error: Callable[[list[T]], None] = lambda _batch: None,
              on_start: Callable[[], Awaitable[None]] | None = None,
              gather: Callable[[], Awaitable[None]] | None = None) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._work(handle, on_error, on_start, gather), name=self.name)

    async def _work(self, handle: Callable[[list[T]], Awaitable[None]], on_error: Callable[[list[T]], None],
                    on_start: Callable[[], Awaitable[None]] | None,
                    gather: Callable[[], Awaitable[None]] | None) -> None:
        if on_start is not None:
            await on_start()
        while True:
            if not self._items:
                if self.closing:
                    return
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
                continue
            if gather is not None and not self.closing:
                await gather()
            batch = self.take()
            try:
                await handle(batch)
            except Exception:  # noqa: BLE001 - the worker must survive anything one batch does
                log.exception("%s: a batch failed unexpectedly", self.name)
                on_error(batch)

    async def stop(self, timeout: float | None = None) -> None:
        """Handle what is queued, then end the worker (cancelled after `timeout` seconds, if given)."""
        self.closing = True
        self._wake_worker()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            log.warning("%s: stopped with %d rows still queued", self.name, self.queued_rows)
