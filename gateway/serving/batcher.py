"""`MicroBatcher`: many small requests for one model become one forward pass.

A batch runs when it holds `max_batch_size` rows or its first request has waited `max_delay_ms`;
while a batch runs on the device thread, the next one fills, so under load batches grow by
themselves. Each batch takes the stage's `current` slot once, marks itself in flight on it, and
answers every request with that slot's version: a swap between batches is invisible to requests.

Observer hook (drift counting, shadow mirroring):

    batcher.observers.append(observer)    # observer.on_batch(batch: CompletedBatch) -> None

`on_batch` is called on the event loop after every successful batch, *after* all of the batch's
requests have their results (responses are already on their way). It must be cheap: count, or put
the batch on a bounded queue and return. `CompletedBatch.inputs` / `.outputs` are the whole batch
(rows × features, rows × outputs, float32, read-only by convention); the rows of request i are
`row_splits[i]:row_splits[i + 1]`. An observer that raises is logged and counted
(`inferloop_batch_observer_errors_total`) and never affects a response or the other observers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
from inferloop.gateway.errors import InferenceFailed, InvalidInput, ModelNotReady

if TYPE_CHECKING:
    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.device import DeviceExecutor
    from inferloop.gateway.serving.slot import ModelSlot
    from inferloop.gateway.serving.stage import ModelStage
    from inferloop.gateway.settings import BatchingSettings

log = logging.getLogger("inferloop.gateway")


@dataclass(frozen=True, slots=True)
class CompletedBatch:
    model: str
    stage: str
    role: str  # "primary" (or "shadow")
    version: int
    inputs: np.ndarray  # (rows, features) float32
    outputs: np.ndarray  # (rows, outputs) float32
    request_ids: tuple[str, ...]
    row_splits: np.ndarray  # len(request_ids) + 1 offsets into the rows
    inference_seconds: float


class BatchObserver(Protocol):
    def on_batch(self, batch: CompletedBatch) -> None: ...


class Prediction(NamedTuple):
    version: int
    outputs: np.ndarray  # this request's rows only


class _Pending:
    __slots__ = ("arrived", "future", "request_id", "rows")

    def __init__(self, rows: np.ndarray, future: asyncio.Future[Prediction], request_id: str, arrived: float) -> None:
        self.rows = rows
        self.future = future
        self.request_id = request_id
        self.arrived = arrived


def _forward(slot: ModelSlot, parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    inputs = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return inputs, slot.predict(inputs)


class MicroBatcher:
    def __init__(self, stage: ModelStage, executor: DeviceExecutor, settings: BatchingSettings,
                 metrics: GatewayMetrics, role: str = "primary") -> None:
        self.stage = stage
        self.executor = executor
        self.settings = settings
        self.role = role
        self.observers: list[BatchObserver] = []
        self.metrics = metrics
        self._max_rows = settings.max_batch_size
        self._delay = settings.max_delay_ms / 1000.0
        self._queue: deque[_Pending] = deque()
        self._observer_logged: dict[str, float] = {}
        self.queued_rows = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._inference_hist = metrics.inference_duration.labels(stage.name, role)
        self._batch_hist = metrics.batch_size.labels(stage.name)
        self.batches = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.stage.name}")

    async def stop(self) -> None:
        """Run what is queued, then stop."""
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None

    # -- requests -----------------------------------------------------------------------------
    async def submit(self, rows: np.ndarray, request_id: str) -> Prediction:
        """Queue `rows` (float32, C-contiguous, (n, features)); resolves with this request's outputs."""
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, loop.create_future(), request_id, loop.time())
        if self._task is None:  # batching off (or stopped): run alone, still off the event loop
            if self._closing and self.settings.enabled:
                raise ModelNotReady(f"model {self.stage.name!r} is shutting down")
            await self._run([pending])
            return pending.future.result()
        if not self._queue:
            self._wake.set()
        self._queue.append(pending)
        self.queued_rows += len(rows)
        if self.queued_rows >= self._max_rows:
            self._full.set()
        return await pending.future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            remaining = self._queue[0].arrived + self._delay - loop.time()
            if remaining > 0 and self.queued_rows < self._max_rows and not self._closing:
                self._full.clear()
                timer = loop.call_later(remaining, self._full.set)
                await self._full.wait()
                timer.cancel()
            batch = self._take()
            try:
                await self._run(batch)
            except Exception:  # noqa: BLE001 - the worker must survive anything one batch does
                log.exception("batch for %s failed unexpectedly", self.stage.name)
                self._fail(batch, InferenceFailed("internal error while running the batch"))

    def _take(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        rows = len(batch[0].rows)
        while self._queue and rows + len(self._queue[0].rows) <= self._max_rows:
            item = self._queue.popleft()
            rows += len(item.rows)
            batch.append(item)
        self.queued_rows -= rows
        return batch

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    async def _current_slot(self) -> ModelSlot | None:
        stage = self.stage
        if stage.current is None and stage.switching:
            await stage.wait_until(lambda: stage.current is not None or not stage.switching,
                                   self.settings.swap_wait_s)
        return stage.current

    async def _run(self, batch: list[_Pending]) -> None:
        slot = self.stage.current
        if slot is None:
            slot = await self._current_slot()
            if slot is None:
                self._fail(batch, ModelNotReady(f"model {self.stage.name!r} has no {self.stage.stage} version loaded"))
                return
        width = slot.signature.width
        if any(item.rows.shape[1] != width for item in batch):
            # the model was swapped for one with another input width since these requests were checked
            keep = [item for item in batch if item.rows.shape[1] == width]
            self._fail([i for i in batch if i.rows.shape[1] != width],
                       InvalidInput(f"model {self.stage.name!r} v{slot.version} takes {width} features"))
            batch = keep
            if not batch:
                return
        slot.enter()  # same loop step as reading `current`: a swap cannot slip in between
        started = time.perf_counter()
        try:
            inputs, outputs = await self.executor.run(_forward, slot, [item.rows for item in batch])
        except Exception as exc:  # noqa: BLE001 - reported to the requests, never raised into the loop
            log.error("inference failed for %s v%s: %s", slot.model, slot.version, exc)
            self._fail(batch, InferenceFailed(f"inference failed on {slot.model} v{slot.version}: {exc}"))
            return
        finally:
            slot.exit()
        seconds = time.perf_counter() - started
        self.batches += 1
        self._inference_hist.observe(seconds)
        self._batch_hist.observe(len(inputs))
        version = slot.version
        if len(batch) == 1:
            item = batch[0]
            if not item.future.done():
                item.future.set_result(Prediction(version, outputs))
            splits = None
        else:
            offset = 0
            bounds = [0]
            for item in batch:
                end = offset + len(item.rows)
                if not item.future.done():
                    item.future.set_result(Prediction(version, outputs[offset:end]))
                offset = end
                bounds.append(end)
            splits = bounds
        if self.observers:
            self._notify(slot, batch, inputs, outputs, splits, seconds)

    def _notify(self, slot: ModelSlot, batch: list[_Pending], inputs: np.ndarray, outputs: np.ndarray,
                splits: list[int] | None, seconds: float) -> None:
        done = CompletedBatch(
            model=slot.model, stage=slot.stage, role=self.role, version=slot.version, inputs=inputs, outputs=outputs,
            request_ids=tuple(item.request_id for item in batch),
            row_splits=np.asarray(splits if splits is not None else [0, len(inputs)], dtype=np.int64),
            inference_seconds=seconds,
        )
        for observer in list(self.observers):
            try:
                observer.on_batch(done)
            except Exception:  # noqa: BLE001 - observers never affect responses
                name = type(observer).__name__
                self.metrics.observer_errors.labels(slot.model, name).inc()
                now = time.monotonic()
                if now - self._observer_logged.get(name, -60.0) >= 60.0:  # at most one traceback a minute each
                    self._observer_logged[name] = now
                    log.exception("batch observer %s failed for %s v%s", name, slot.model, slot.version)
