"""Shadow traffic: mirror a sample of live requests to the `shadow` version, off the primary's path.

`ShadowMirror` is an observer of the primary batcher (see `inferloop.gateway.serving.batcher`): after a primary batch
has answered its requests, the rows of the sampled requests go onto a bounded queue; a worker runs
them through the shadow slot in batches on its own executor thread, compares both outputs
(`ShadowComparison`) and writes one joined record per request to the prediction log.

What keeps the primary safe:
- the primary never waits for the shadow: mirroring starts after its responses are resolved;
- the queue is bounded in rows; overflow drops and counts (`reason="queue_full"`);
- a compute budget: shadow inference time may be at most `budget` of all inference time (decayed
  sums over a few seconds); beyond it mirrored batches are dropped and counted (`reason="budget"`);
- shadow inference runs on its own thread at the lowest CPU priority (on GPU, its own low-priority
  CUDA stream), so the OS prefers the primary's thread;
- a shadow batch that raises, returns NaN/Inf or runs past `timeout_s` is counted as an error; while
  a timed-out batch still occupies the shadow thread, new batches are dropped (`reason="busy"`).

Sampling is deterministic by request id (CRC-32 of the id against the rate), so the same request is
always in or out, on every replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from inferloop.gateway.serving.work_queue import WorkQueue
from inferloop.gateway.shadow.report import ShadowComparison, ShadowReport

if TYPE_CHECKING:
    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.batcher import CompletedBatch
    from inferloop.gateway.serving.device import DeviceExecutor
    from inferloop.gateway.serving.events import EventRecorder
    from inferloop.gateway.serving.poller import StagePoller
    from inferloop.gateway.serving.slot import ModelSlot
    from inferloop.gateway.serving.stage import ModelStage
    from inferloop.gateway.settings import ShadowSettings
    from inferloop.gateway.shadow.prediction_log import PredictionLog
    from inferloop.policy import ShadowPolicy
    from inferloop.registry import AsyncRegistry

log = logging.getLogger("inferloop.shadow")

_SCALE = float(2**32)


def in_sample(request_id: str, rate: float) -> bool:
    """The same request id is always in or out of a sample of `rate`."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return zlib.crc32(request_id.encode()) < rate * _SCALE


class ShadowBudget:
    """Shadow inference time may be at most `share` of all inference time, over a decaying window."""

    def __init__(self, share: float, half_life_s: float = 5.0, burst_s: float = 0.02,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = share / (1.0 - share) if share < 1.0 else math.inf
        self.half_life_s = half_life_s
        self.burst_s = burst_s
        self.clock = clock
        self.primary = 0.0
        self.shadow = 0.0
        self._at = clock()

    def _decay(self) -> None:
        now = self.clock()
        factor = 0.5 ** ((now - self._at) / self.half_life_s)
        self.primary *= factor
        self.shadow *= factor
        self._at = now

    def add_primary(self, seconds: float) -> None:
        self._decay()
        self.primary += seconds

    def add_shadow(self, seconds: float) -> None:
        self._decay()
        self.shadow += seconds

    def allows(self) -> bool:
        self._decay()
        return self.shadow <= self.ratio * self.primary + self.burst_s


@dataclass(slots=True)
class _Mirrored:
    inputs: tuple[np.ndarray, ...]  # the sampled requests' rows of every input
    primary: np.ndarray  # their primary's first output (compared by name with the shadow's)
    request_ids: list[str]
    splits: list[int]  # row offsets of each request in `inputs`
    primary_version: int
    primary_seconds: float
    at: float


def _rows(item: _Mirrored) -> int:
    return len(item.inputs[0])


def _requests(items: list[_Mirrored]) -> int:
    return sum(len(item.request_ids) for item in items)


def _lower_priority() -> None:
    """Runs once on the shadow thread: lowest CPU priority (Linux nices threads one by one)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class ShadowMirror:
    def __init__(self, model: str, stage: ModelStage, executor: DeviceExecutor, settings: ShadowSettings,
                 policy: ShadowPolicy, metrics: GatewayMetrics, prediction_log: PredictionLog | None,
                 primary_stage: ModelStage, events: EventRecorder | None = None) -> None:
        self.model = model
        self.events = events  # a refused shadow is an audit event, once per version pair
        self.stage = stage
        self.primary_stage = primary_stage
        self.executor = executor
        self.settings = settings
        self.policy = policy
        self.sample_rate = policy.sample_rate
        self.metrics = metrics
        self.prediction_log = prediction_log
        self.budget = ShadowBudget(settings.budget)
        self.comparison: ShadowComparison | None = None
        self._queue: WorkQueue[_Mirrored] = WorkQueue(f"shadow-{model}", _rows, settings.max_batch_rows)
        self._stuck: asyncio.Future[Any] | None = None
        self._checked: tuple[tuple[int, int] | None, bool] = (None, False)  # (primary, shadow) version pair
        self._stream: Any = None
        self.mirrored = 0
        self._promoted: set[tuple[int | None, int | None]] = set()
        self.dropped: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        for reason in ("queue_full", "budget", "busy", "no_shadow", "signature_mismatch"):  # 0 before the first drop
            metrics.shadow_dropped.labels(model, reason)
        for reason in ("exception", "non_finite", "timeout", "internal"):
            metrics.shadow_errors.labels(model, reason)
        self._hist = metrics.inference_duration.labels(model, "shadow")
        self._ok = metrics.requests.labels(model, "shadow", "200")
        self._failed = metrics.requests.labels(model, "shadow", "500")

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._queue.start(self._handle, on_error=self._internal_error,
                          on_start=lambda: self.executor.run(_lower_priority))

    async def stop(self) -> None:
        """Finish what is queued (bounded by the queue size and twice the shadow timeout), then stop."""
        await self._queue.stop(self.settings.timeout_s * 2)

    # -- the observer (event loop, after the primary answered) --------------------------------
    def on_batch(self, batch: CompletedBatch) -> None:
        self.budget.add_primary(batch.inference_seconds)
        shadow = self.stage.current
        ids = batch.request_ids
        splits = batch.row_splits
        rate = self.sample_rate
        if shadow is None or rate <= 0 or shadow.version == batch.version:  # nothing to compare
            self._log_unmirrored(batch, range(len(ids)))
            return
        chosen = [i for i, rid in enumerate(ids) if in_sample(rid, rate)] if rate < 1 else list(range(len(ids)))
        if len(chosen) < len(ids):
            chosen_set = set(chosen)
            self._log_unmirrored(batch, [i for i in range(len(ids)) if i not in chosen_set])
        if not chosen:
            return
        if not self._compatible(shadow):
            self._drop("signature_mismatch", len(chosen))
            return
        all_inputs = batch.all_inputs or (batch.inputs,)
        if len(chosen) == len(ids):
            inputs, primary = all_inputs, batch.outputs
            new_splits = [int(s) for s in splits]
            rids = list(ids)
        else:
            rows = np.concatenate([np.arange(splits[i], splits[i + 1]) for i in chosen])
            inputs, primary = tuple(a[rows] for a in all_inputs), batch.outputs[rows]
            new_splits = [0]
            for i in chosen:
                new_splits.append(new_splits[-1] + int(splits[i + 1] - splits[i]))
            rids = [ids[i] for i in chosen]
        if self._queue.queued_rows + len(primary) > self.settings.queue_rows:
            self._drop("queue_full", len(rids))
            return
        self._queue.put(_Mirrored(inputs, primary, rids, new_splits, batch.version, batch.inference_seconds,
                                  time.time()))

    def _compatible(self, shadow: ModelSlot) -> bool:
        """A shadow must take the primary's inputs and give an output named like the primary's first
        one; otherwise its requests are dropped (`reason="signature_mismatch"`), logged once per pair."""
        primary = self.primary_stage.current
        if primary is None:
            return False
        pair = (primary.version, shadow.version)
        if self._checked[0] != pair:
            ok = shadow.signature.same_inputs(primary.signature) \
                and primary.signature.output_names[0] in shadow.signature.output_names
            self._checked = (pair, ok)
            if not ok:
                shadow_takes = [(t.name, t.datatype, t.shape) for t in shadow.signature.inputs]
                primary_takes = [(t.name, t.datatype, t.shape) for t in primary.signature.inputs]
                log.error("%s: shadow v%s cannot be compared with production v%s: their signatures differ "
                          "(shadow takes %s and gives %s; production takes %s and gives %s); its mirrored requests "
                          "are dropped", self.model, shadow.version, primary.version, shadow_takes,
                          list(shadow.signature.output_names), primary_takes, list(primary.signature.output_names))
                if self.events is not None:
                    self.events.record(
                        self.model, "shadow_evaluated", stage="shadow", version=shadow.version,
                        reason=f"refused: shadow v{shadow.version}'s signature differs from production "
                               f"v{primary.version}'s; no traffic is mirrored to it",
                        details={"verdict": "refused", "cause": "signature_mismatch",
                                 "production_version": primary.version,
                                 "shadow_inputs": [list(t) for t in shadow_takes],
                                 "shadow_outputs": list(shadow.signature.output_names),
                                 "production_inputs": [list(t) for t in primary_takes],
                                 "production_outputs": list(primary.signature.output_names)})
        return self._checked[1]

    def _drop(self, reason: str, requests: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + requests
        self.metrics.shadow_dropped.labels(self.model, reason).inc(requests)

    def _error(self, reason: str, requests: int) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + requests
        self.metrics.shadow_errors.labels(self.model, reason).inc(requests)
        self._failed.inc(requests)

    def _log_unmirrored(self, batch: CompletedBatch, which: Any) -> None:
        plog = self.prediction_log
        rate = self.settings.log_sample_rate
        if plog is None or rate <= 0:
            return
        from inferloop.gateway.shadow.prediction_log import PredictionRecord

        splits = batch.row_splits
        now = time.time()
        for i in which:
            rid = batch.request_ids[i]
            if not in_sample("log:" + rid, rate):
                continue
            a, b = int(splits[i]), int(splits[i + 1])
            plog.submit(PredictionRecord(
                time=now, request_id=rid, model=self.model, primary_version=batch.version,
                primary_output=batch.outputs[a:b].tolist(), primary_latency_ms=batch.inference_seconds * 1e3,
                inputs=batch.inputs[a:b].tolist(), mirrored=False))

    # -- the worker ---------------------------------------------------------------------------
    async def _handle(self, items: list[_Mirrored]) -> None:
        requests = _requests(items)
        if self._stuck is not None and not self._stuck.done():
            self._drop("busy", requests)
            return
        self._stuck = None
        if not self.budget.allows():
            self._drop("budget", requests)
            return
        slot = self.stage.current
        if slot is None:
            self._drop("no_shadow", requests)
            return
        await self._run(slot, items, requests)

    def _internal_error(self, items: list[_Mirrored]) -> None:
        self._error("internal", _requests(items))

    async def _run(self, slot: ModelSlot, items: list[_Mirrored], requests: int) -> None:
        if len(items) == 1:
            inputs = items[0].inputs
        else:
            inputs = tuple(np.concatenate([i.inputs[k] for i in items]) for k in range(len(items[0].inputs)))
        slot.enter()
        started = time.perf_counter()
        future = asyncio.ensure_future(self.executor.run(self._predict, slot, inputs))
        try:
            done, _ = await asyncio.wait({future}, timeout=self.settings.timeout_s)
            if not done:
                self._stuck = future
                self._error("timeout", requests)
                self._log_joined(items, slot.version, None, None, "shadow timed out")
                return
            try:
                outputs = future.result()
            except Exception as exc:  # noqa: BLE001 - a shadow that raises is counted, not propagated
                self._error("exception", requests)
                self._log_joined(items, slot.version, None, None, f"{type(exc).__name__}: {exc}"[:300])
                return
        finally:
            slot.exit()
        seconds = time.perf_counter() - started
        self.budget.add_shadow(seconds)
        self._hist.observe(seconds)
        if not np.isfinite(outputs).all():
            self._error("non_finite", requests)
            self._log_joined(items, slot.version, None, seconds, "non-finite shadow output")
            return
        self.mirrored += requests
        self._ok.inc(requests)
        comparison = self._comparison(items[0].primary_version, slot)
        offset = 0
        for item in items:
            n = len(item.primary)
            comparison.add(item.primary, outputs[offset:offset + n], item.primary_seconds, seconds)
            offset += n
        self._log_joined(items, slot.version, outputs, seconds, None)

    def _predict(self, slot: ModelSlot, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        """The shadow's output named like the primary's first output (checked by `_compatible`)."""
        primary = self.primary_stage.current
        name = primary.signature.output_names[0] if primary is not None else slot.signature.output_names[0]
        index = slot.signature.output_names.index(name) if name in slot.signature.output_names else 0
        if slot.device.startswith("cuda"):
            import torch

            if self._stream is None:
                self._stream = torch.cuda.Stream(device=slot.device, priority=0)  # 0 = lowest priority
            with torch.cuda.stream(self._stream):
                return slot.predict(inputs)[index]
        return slot.predict(inputs)[index]

    def _comparison(self, primary_version: int, slot: ModelSlot) -> ShadowComparison:
        cmp = self.comparison
        if cmp is None or cmp.primary_version != primary_version or cmp.shadow_version != slot.version:
            sig = slot.signature
            cmp = self.comparison = ShadowComparison(self.model, primary_version, slot.version, sig.output_kind,
                                                     sig.outputs, capacity=self.settings.report_window)
        return cmp

    def _log_joined(self, items: list[_Mirrored], shadow_version: int, outputs: np.ndarray | None,
                    seconds: float | None, error: str | None) -> None:
        plog = self.prediction_log
        if plog is None:
            return
        from inferloop.gateway.shadow.prediction_log import PredictionRecord

        offset = 0
        for item in items:
            for j, rid in enumerate(item.request_ids):
                a, b = item.splits[j], item.splits[j + 1]
                plog.submit(PredictionRecord(
                    time=item.at, request_id=rid, model=self.model, primary_version=item.primary_version,
                    primary_output=item.primary[a:b].tolist(), primary_latency_ms=item.primary_seconds * 1e3,
                    inputs=item.inputs[0][a:b].tolist(), mirrored=True, shadow_version=shadow_version,
                    shadow_output=outputs[offset + a:offset + b].tolist() if outputs is not None else None,
                    shadow_latency_ms=seconds * 1e3 if seconds is not None else None, shadow_error=error))
            offset += len(item.primary)

    # -- the report and promotion on evidence -------------------------------------------------
    def current_report(self) -> ShadowReport | None:
        """The report of the version pair serving now (None before any pair was compared)."""
        cmp = self.comparison
        if cmp is None or cmp.shadow_version != self.stage.serving_version \
                or cmp.primary_version != self.primary_stage.serving_version:
            return None
        return cmp.report(self.policy)

    def publish(self) -> ShadowReport | None:
        report = self.current_report()
        m = self.metrics
        if report is None:
            return None
        m.shadow_compared.labels(self.model).set(report.compared)
        if report.prediction_psi is not None:
            m.shadow_prediction_psi.labels(self.model).set(report.prediction_psi)
        if report.agreement is not None:
            m.shadow_agreement.labels(self.model).set(report.agreement.rate)
        return report

    async def maybe_promote(self, registry: AsyncRegistry, report: ShadowReport) -> bool:
        """Promote shadow → production once per version pair when `auto_promote` and every rule holds.
        The move is a compare-and-swap on production, so of N replicas exactly one promotes."""
        from inferloop.registry import Conflict, RegistryError

        pair = (report.primary_version, report.shadow_version)
        if not (self.policy.auto_promote and report.rules_met) or pair in self._promoted \
                or report.shadow_version is None:
            return False
        self._promoted.add(pair)
        actor = "gateway:auto-promote"
        reason = (f"shadow v{report.shadow_version} met every rule over {report.compared} mirrored rows "
                  f"(prediction PSI {_short(report.prediction_psi)}, p99 latency ratio "
                  f"{_short(report.p99_latency_ratio)})")
        try:
            await registry.promote(self.model, report.shadow_version, "production", actor=actor, reason=reason,
                                   expected_version=report.primary_version,
                                   details={"shadow_report": msgspec.to_builtins(report)})
        except Conflict:
            log.info("%s: production moved before the auto-promotion of v%s (another replica or an operator)",
                     self.model, report.shadow_version)
            return False
        except RegistryError as exc:
            self._promoted.discard(pair)  # try again next round
            log.warning("%s: auto-promotion of v%s failed: %s", self.model, report.shadow_version, exc)
            return False
        self.metrics.shadow_promotions.labels(self.model).inc()
        log.info("%s: promoted shadow v%s to production on evidence", self.model, report.shadow_version)
        try:  # the shadow stage has nothing left to compare
            await registry.clear(self.model, "shadow", actor=actor, reason=f"v{report.shadow_version} promoted",
                                 expected_version=report.shadow_version)
        except RegistryError:
            pass
        return True

    def report(self) -> dict[str, Any]:
        shadow_version = self.stage.serving_version
        primary_version = self.primary_stage.serving_version
        current = self.current_report()
        return {
            "model": self.model, "primary_version": primary_version, "shadow_version": shadow_version,
            "sample_rate": self.sample_rate, "budget": self.settings.budget, "mirrored": self.mirrored,
            "dropped": dict(self.dropped), "errors": dict(self.errors), "queued_rows": self._queue.queued_rows,
            "report": current,
        }


def _short(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


async def auto_promote_loop(mirror: ShadowMirror, registry: AsyncRegistry, events: EventRecorder,
                            shadow_poller: StagePoller, primary_poller: StagePoller, interval: float) -> None:
    """Publish the shadow report to metrics every `interval`, and promote on evidence when the policy
    says `auto_promote: true` and every rule holds."""
    while True:
        await asyncio.sleep(interval)
        try:
            report = mirror.publish()
            if report is not None and await mirror.maybe_promote(registry, report):
                primary_poller.poke()
                shadow_poller.poke()
        except Exception:  # noqa: BLE001 - evaluation must never stop; the next round tries again
            log.exception("shadow evaluation failed for %s", mirror.model)
