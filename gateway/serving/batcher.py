"""`MicroBatcher`: many small requests for one model become one forward pass.

Work-conserving: when the device thread is free, queued requests run at once as one batch (up to
`max_batch_size` rows); while a batch runs, the next one fills, so batches grow exactly as fast as
load does and a lone client never waits for company that cannot come. A batch is held back only
when `BatchWait`'s measurements say the wait pays (rows keep arriving during forwards, and the wait
is shorter than the fixed cost per forward it saves), and never longer than `max_delay_ms`.

Where a batch runs: on the device thread, or, at low concurrency, on the event loop itself. Handing
a forward to a thread and back costs CPU the forward does not (measured on one core: ~65 µs per
request against a 31 µs forward of a small MLP, ~160 µs against a 0.6 ms one of a 4 × 1024 MLP).
Under load that hand-off pays for itself: requests keep arriving while it runs and the next batch is
larger (measured at 32 connections: 23 rows per batch through the thread, 11 without it, and 10 %
fewer requests served). So a batch runs on the loop only when it is a single request with nothing
queued behind it, recent batches were single requests too (no company to gather), the model's rows
have a fixed size (no dynamic axis but the batch, so rows predict cost), the device thread is idle,
the device is the CPU, and the same cost fit predicts the forward to take at most
`inline_max_ms` (default 2 ms: at low concurrency nothing else waits for the loop meanwhile, and a
request that does is read right after). The first forwards of each version run on the thread, to be
measured; a longer forward never blocks the loop.

Each batch takes the stage's `current` slot once, marks itself in flight on it, and answers every
request with that slot's version: a swap between batches is invisible to requests.

Observer hook (drift counting, shadow mirroring):

    batcher.observers.append(observer)    # observer.on_batch(batch: CompletedBatch) -> None

`on_batch` is called on the event loop after every successful batch, *after* all of the batch's
requests have their results (responses are already on their way). It must be cheap: count, or put
the batch on a bounded queue and return. `CompletedBatch.inputs` / `.outputs` are the whole batch
(rows × features, rows × outputs, float32); the rows of request i are `row_splits[i]:row_splits[i + 1]`.
The batch and its arrays are shared by every observer: read-only by convention. An observer that raises is logged and counted
(`inferloop_batch_observer_errors_total`) and never affects a response or the other observers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from inferloop.gateway.errors import InferenceFailed, InvalidInput, ModelNotReady
from inferloop.gateway.serving.batch_wait import BatchWait
from inferloop.gateway.serving.work_queue import WorkQueue

if TYPE_CHECKING:
    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.device import DeviceExecutor
    from inferloop.gateway.serving.slot import ModelSlot
    from inferloop.gateway.serving.stage import ModelStage
    from inferloop.gateway.settings import BatchingSettings

log = logging.getLogger("inferloop.gateway")


@dataclass(slots=True)  # not frozen: its __init__ would set each field through object.__setattr__
class CompletedBatch:
    model: str
    stage: str
    role: str  # "primary" (or "shadow")
    version: int
    inputs: np.ndarray  # the first input: (rows, features) float32 for a tabular model
    outputs: np.ndarray  # the first output: (rows, outputs) for a tabular model
    request_ids: tuple[str, ...]
    row_splits: tuple[int, ...]  # len(request_ids) + 1 offsets into the rows
    inference_seconds: float
    all_inputs: tuple[np.ndarray, ...] = ()  # every input, in signature order (inputs is the first)
    all_outputs: tuple[np.ndarray, ...] = ()  # every output, in signature order (outputs is the first)


class BatchObserver(Protocol):
    def on_batch(self, batch: CompletedBatch) -> None: ...


class Prediction(NamedTuple):
    version: int
    outputs: tuple[np.ndarray, ...]  # one array per signature output, this request's rows only
    output_names: tuple[str, ...]  # of the version that answered


class _Pending:
    __slots__ = ("future", "inputs", "request_id")

    def __init__(self, inputs: tuple[np.ndarray, ...], future: asyncio.Future[Prediction], request_id: str) -> None:
        self.inputs = inputs
        self.future = future
        self.request_id = request_id


def _rows(item: _Pending) -> int:
    return len(item.inputs[0])


def _shape_key(item: _Pending) -> tuple[tuple[int, ...], ...]:
    return tuple(a.shape[1:] for a in item.inputs)


# forwards of a version measured on the device thread before any may run on the event loop
MEASURED_BEFORE_INLINE = 8
# requests per batch, recently (exponentially weighted), at most which batches may run on the event loop
INLINE_MAX_MEAN_REQUESTS = 1.5
_MEAN_KEEP = 0.9  # weight kept per batch: the mean follows the load within tens of batches


def _forward(slot: ModelSlot, parts: list[tuple[np.ndarray, ...]]
             ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], float]:
    """Concatenate each input along the batch axis, run one forward; the inputs, the outputs and the
    forward's own seconds (timed where it runs: a hand-off's cost is not the model's)."""
    if len(parts) == 1:
        inputs = parts[0]
    else:
        inputs = tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    started = time.perf_counter()
    outputs = tuple(slot.predict(inputs))
    return inputs, outputs, time.perf_counter() - started


def _forward_error(slot: ModelSlot, exc: Exception) -> Exception:
    """What a request whose forward raised gets: an index or value the model refuses (an id outside an
    embedding table, say) is the request's fault (400); anything else is the model's (500)."""
    if isinstance(exc, IndexError | ValueError):
        return InvalidInput(f"model {slot.model!r} v{slot.version} refused this request's inputs: {exc}")
    log.error("inference failed for %s v%s: %s", slot.model, slot.version, exc)
    return InferenceFailed(f"inference failed on {slot.model} v{slot.version}: {exc}")


class MicroBatcher:
    def __init__(self, stage: ModelStage, executor: DeviceExecutor, settings: BatchingSettings,
                 metrics: GatewayMetrics, role: str = "primary") -> None:
        self.stage = stage
        self.executor = executor
        self.settings = settings
        self.role = role
        self.observers: list[BatchObserver] = []
        self.metrics = metrics
        self.wait = BatchWait(settings.max_delay_ms / 1000.0)
        self._inline_max_s = settings.inline_max_ms / 1000.0
        self._timed_version: int | None = None  # the version `wait`'s cost fit is for
        self.forwards = {"inline": 0, "device_thread": 0}
        self.mean_requests = 1.0  # requests per batch, recently
        self._queue: WorkQueue[_Pending] = WorkQueue(f"batcher-{stage.name}", _rows, settings.max_batch_size)
        self._observer_logged: dict[str, float] = {}
        self._full = asyncio.Event()
        self._in_flight = False
        self._in_flight_requests = 0
        self._arrived_in_flight = 0  # rows queued while the current forward runs
        self._inference_hist = metrics.inference_duration.labels(stage.name, role)
        self._batch_hist = metrics.batch_size.labels(stage.name)
        self.batches = 0

    @property
    def queued_rows(self) -> int:
        return self._queue.queued_rows

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests in the forward running on the device thread now (0: none)."""
        return self._in_flight_requests

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.enabled:
            self._queue.start(self._run, on_error=self._internal_error, gather=self._gather)

    async def stop(self) -> None:
        """Run what is queued, then stop."""
        self._full.set()
        await self._queue.stop()

    # -- requests -----------------------------------------------------------------------------
    async def submit(self, inputs: tuple[np.ndarray, ...], request_id: str) -> Prediction:
        """Queue one request's inputs (an array per signature input, batch axis first, C-contiguous);
        resolves with this request's outputs."""
        pending = _Pending(inputs, asyncio.get_running_loop().create_future(), request_id)
        queue = self._queue
        if not queue.running:  # batching off (or stopped): run alone, placed as any batch is
            if queue.closing and self.settings.enabled:
                raise ModelNotReady(f"model {self.stage.name!r} is shutting down")
            await self._run([pending])
            return pending.future.result()
        queue.put(pending)
        if self._in_flight:
            self._arrived_in_flight += len(inputs[0])
        if queue.queued_rows >= queue.max_rows:
            self._full.set()
        return await pending.future

    async def _gather(self) -> None:
        """Hold the batch back while `BatchWait` says company is coming (see the module docstring)."""
        wait = self.wait.seconds()
        if wait <= 0.0 or self._queue.queued_rows >= self._queue.max_rows:
            return
        self._full.clear()
        try:
            await asyncio.wait_for(self._full.wait(), wait)
        except TimeoutError:
            pass

    def _internal_error(self, batch: list[_Pending]) -> None:
        self._fail(batch, InferenceFailed("internal error while running the batch"))

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
        sig = slot.signature
        fits = sig.fits
        if not all([fits(item.inputs) for item in batch]):
            # the model was swapped for one with another signature since these requests were checked
            self._fail([i for i in batch if not sig.fits(i.inputs)],
                       InvalidInput(f"model {self.stage.name!r} v{slot.version} takes "
                                    + ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in sig.inputs)))
            batch = [item for item in batch if sig.fits(item.inputs)]
            if not batch:
                return
        if not sig.tabular and len({_shape_key(item) for item in batch}) > 1:
            # other dynamic axes differ between requests: each shape runs as its own batch (no padding)
            groups: dict[tuple[tuple[int, ...], ...], list[_Pending]] = {}
            for item in batch:
                groups.setdefault(_shape_key(item), []).append(item)
            for group in groups.values():
                await self._forward(slot, group)
            return
        await self._forward(slot, batch)

    def _place(self, slot: ModelSlot, batch: list[_Pending]) -> bool:
        """Count this batch (the recent mean; a new version restarts the cost fit) and say whether its
        forward runs on the event loop (see the module docstring). Only a model whose rows have a fixed
        size qualifies: the fit predicts from rows, and one row of a model with another dynamic axis
        (a sequence length) can cost any amount, which must not stall the loop."""
        wait = self.wait
        if slot.version != self._timed_version:  # a new version: measure it afresh
            self._timed_version = slot.version
            wait.reset()
        self.mean_requests = self.mean_requests * _MEAN_KEEP + len(batch) * (1.0 - _MEAN_KEEP)
        if (len(batch) > 1 or self._queue.queued_rows or self.mean_requests > INLINE_MAX_MEAN_REQUESTS
                or not slot.signature.fixed_rows or wait.observations < MEASURED_BEFORE_INLINE
                or not self.executor.can_run_here):
            return False
        return wait.predict(len(batch[0].inputs[0])) <= self._inline_max_s

    async def _forward(self, slot: ModelSlot, batch: list[_Pending]) -> None:
        slot.enter()  # same loop step as reading `current`: a swap cannot slip in between
        self._in_flight, self._arrived_in_flight, self._in_flight_requests = True, 0, len(batch)
        failed: Exception | None = None
        parts = [item.inputs for item in batch]
        try:
            if self._place(slot, batch):
                self.forwards["inline"] += 1
                inputs, outputs, seconds = self.executor.run_here(_forward, slot, parts)
            else:
                self.forwards["device_thread"] += 1
                inputs, outputs, seconds = await self.executor.run(_forward, slot, parts)
        except Exception as exc:  # noqa: BLE001 - reported to the requests, never raised into the loop
            failed = exc
        finally:
            slot.exit()
            self._in_flight, self._in_flight_requests = False, 0
        if failed is not None:
            if len(batch) > 1:  # one request's inputs may be what the model refuses: only that one fails
                for item in batch:
                    await self._forward(slot, [item])
                return
            self._fail(batch, _forward_error(slot, failed))
            return
        rows = len(inputs[0])
        self.wait.observe(rows, seconds, self._arrived_in_flight)
        self.batches += 1
        self._inference_hist.observe(seconds)
        self._batch_hist.observe(rows)
        version, names = slot.version, slot.signature.output_names
        if len(batch) == 1:
            item = batch[0]
            if not item.future.done():
                item.future.set_result(Prediction(version, outputs, names))
            splits: tuple[int, ...] = (0, rows)
        else:
            offset = 0
            bounds = [0]
            single = len(outputs) == 1
            for item in batch:
                end = offset + len(item.inputs[0])
                if not item.future.done():
                    part = (outputs[0][offset:end],) if single else tuple(out[offset:end] for out in outputs)
                    item.future.set_result(Prediction(version, part, names))
                offset = end
                bounds.append(end)
            splits = tuple(bounds)
        if self.observers:
            self._notify(slot, batch, inputs, outputs, splits, seconds)

    def _notify(self, slot: ModelSlot, batch: list[_Pending], inputs: tuple[np.ndarray, ...],
                outputs: tuple[np.ndarray, ...], splits: tuple[int, ...], seconds: float) -> None:
        done = CompletedBatch(
            model=slot.model, stage=slot.stage, role=self.role, version=slot.version, inputs=inputs[0],
            outputs=outputs[0], request_ids=tuple([item.request_id for item in batch]), row_splits=splits,
            inference_seconds=seconds, all_inputs=inputs, all_outputs=outputs,
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
