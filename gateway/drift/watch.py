"""`DriftWatch`: the gateway side of the loop for one model.

It observes every primary batch (counting into the production version's reference bins), closes
windows on a timer, and when drift trips it records `drift_detected`, calls the policy's trigger
(trainer, Airflow, GitHub or webhook) in the background with retries. `retrain_requested` is
recorded once per job by whoever knows the job: for `action: retrain` that is the trainer, which
records it when the request creates a job (a retry, or another replica's trip folded into the same
job, records nothing); for the other actions the gateway records it once the delivery is accepted
(the only place that knows). A new production version brings a new reference and a fresh
monitor (and so ends any cooldown); when that reference is too small for the policy's threshold to
apply at the policy's window, a warning is logged and shown in the drift state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from inferloop.gateway.drift.monitor import DriftMonitor, WindowResult, smoothed_expected
from inferloop.gateway.drift.trigger import TriggerOutcome, TriggerPayload, deliver
from inferloop.registry.drift_columns import input_matrix, is_tabular, output_column
from inferloop.registry.drift_power import power_check

if TYPE_CHECKING:
    import httpx

    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.batcher import CompletedBatch
    from inferloop.gateway.serving.events import EventRecorder
    from inferloop.gateway.serving.stage import ModelStage
    from inferloop.policy import MonitorPolicy
    from inferloop.registry.manifest import InputSignature

log = logging.getLogger("inferloop.drift")


class DriftWatch:
    def __init__(self, model: str, policy: MonitorPolicy, stage: ModelStage, metrics: GatewayMetrics,
                 events: EventRecorder, http: httpx.AsyncClient, *, trigger_enabled: bool = True) -> None:
        self.model = model
        self.policy = policy
        self.stage = stage
        self.metrics = metrics
        self.events = events
        self.http = http
        self.trigger_enabled = trigger_enabled
        self.monitor: DriftMonitor | None = None
        self.power_warning: str | None = None  # the production reference is too small for the threshold
        self.deliveries: list[asyncio.Task[TriggerOutcome]] = []
        self.last_outcome: TriggerOutcome | None = None
        self._psi = metrics.feature_psi
        self._critical = metrics.feature_psi_critical
        self._triggers = metrics.drift_triggers.labels(model)
        self._columns: tuple[InputSignature, bool, bool] | None = None
        stage.listeners.append(self._on_swap)
        if stage.current is not None:
            self._on_swap(stage, None, stage.serving_version)

    # -- observer and swap listener (event loop) ----------------------------------------------
    def on_batch(self, batch: CompletedBatch) -> None:
        monitor = self.monitor
        if monitor is not None and batch.version == monitor.reference_version:
            columns = self._columns
            if columns is None:  # a tabular model's features, as the reference holds them
                monitor.observe(batch.inputs)
                return
            signature, tabular, with_output = columns
            x = batch.inputs if tabular else input_matrix(signature, batch.all_inputs or (batch.inputs,), False)
            if with_output:  # then the first output's column, as its own block: no per-batch copy
                out = batch.outputs
                monitor.observe(x, out.reshape(len(out), -1)[:, :1])
            else:
                monitor.observe(x)

    def _on_swap(self, stage: ModelStage, _old: int | None, new: int | None) -> None:
        slot = stage.current
        reference = slot.manifest.reference if slot is not None else None
        if new is None or reference is None or not reference.features:
            self.monitor = None
            self.power_warning = None
            return
        self.monitor = DriftMonitor(reference, self.policy, reference_version=new)
        assert slot is not None
        self._columns = self._column_plan(slot.manifest.signature, [f.name for f in reference.features])
        psi = self.policy.methods.psi
        check = power_check(reference, threshold=psi.threshold, window=self.policy.window, alpha=psi.false_alarm_rate)
        self.power_warning = check.message if check is not None else None
        if check is not None:
            log.warning("%s v%s: %s", self.model, new, check.message)

    @staticmethod
    def _column_plan(signature: InputSignature, names: list[str]
                     ) -> tuple[InputSignature, bool, bool] | None:
        """How a batch becomes the reference's columns (`registry.drift_columns`): None when they are
        exactly a tabular model's features (the common case, no copy); else the signature, whether the
        inputs are tabular, and whether the first output's column follows them."""
        tabular = is_tabular(signature)
        with_output = bool(names) and names[-1] == output_column(signature)
        if tabular and not with_output:
            return None
        return signature, tabular, with_output

    # -- the timer ----------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> WindowResult | None:
        monitor = self.monitor
        if monitor is None or not monitor.window_ready(now):
            return None
        result = monitor.close_window(now)
        for f in result.features:
            self._psi.labels(self.model, f.feature).set(f.psi)
            self._critical.labels(self.model, f.feature).set(f.critical)
        if monitor.should_trigger(now):
            self._fire(monitor, result, now)
        return result

    def _fire(self, monitor: DriftMonitor, result: WindowResult, now: float | None) -> None:
        key = monitor.idempotency_key(self.model, now)
        monitor.mark_triggered(now)
        self._triggers.inc()
        worst = max(result.features, key=lambda f: f.psi / f.level)  # furthest over its own level
        reason = (f"PSI {worst.psi:.3f} on {worst.feature} > level {worst.level:.3f} (threshold {monitor.threshold}, "
                  f"critical {worst.critical:.3f} at false-alarm rate {monitor.false_alarm_rate:g}, n={result.n}, "
                  f"noise floor {worst.noise_floor:.4f}) against v{monitor.reference_version}")
        snapshot = {"window": msgspec.to_builtins(result), "reference_version": monitor.reference_version,
                    "edges_digest": monitor.edges_digest, "threshold": monitor.threshold,
                    "false_alarm_rate": monitor.false_alarm_rate, "max_psi": result.max_psi}
        log.warning("%s: drift detected: %s", self.model, reason)
        self.events.record(self.model, "drift_detected", version=monitor.reference_version, reason=reason,
                           details={"idempotency_key": key, "max_psi": result.max_psi,
                                    "psi": {f.feature: round(f.psi, 5) for f in result.features},
                                    "critical": {f.feature: round(f.critical, 5) for f in result.features},
                                    "n": result.n, "window": [result.started_at, result.ended_at]})
        if not self.trigger_enabled:
            return
        payload = TriggerPayload(model=self.model, reason=reason, idempotency_key=key, snapshot=snapshot)
        task = asyncio.get_running_loop().create_task(self._deliver(payload, monitor.reference_version))
        self.deliveries = [t for t in self.deliveries if not t.done()]
        self.deliveries.append(task)

    async def _deliver(self, payload: TriggerPayload, version: int | None) -> TriggerOutcome:
        trigger = self.policy.on_trigger
        outcome = await deliver(self.http, trigger, payload)
        self.last_outcome = outcome
        if outcome.ok and trigger.action == "retrain":
            # the trainer recorded `retrain_requested` when this request created its job (exactly once
            # per job): recording it here too put every retrain in the audit log twice
            log.info("%s: retrain requested from the trainer: job %s (%s)", self.model, outcome.job_id, outcome.status)
        elif outcome.ok:
            self.events.record(self.model, "retrain_requested", version=version, reason=payload.reason[:500],
                               details={"action": trigger.action, "job_id": outcome.job_id, "status": outcome.status,
                                        "attempts": outcome.attempts, "idempotency_key": payload.idempotency_key})
        else:
            log.error("%s: retrain request not delivered: %s", self.model, outcome.detail)
        return outcome

    async def close(self) -> None:
        for task in self.deliveries:
            task.cancel()
        await asyncio.gather(*self.deliveries, return_exceptions=True)
        if self._on_swap in self.stage.listeners:
            self.stage.listeners.remove(self._on_swap)

    # -- what operators see -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        monitor = self.monitor
        if monitor is None:
            return {"model": self.model, "state": "no reference", "reference_version": None}
        st = monitor.state
        return {
            "model": self.model, "state": st.state, "reference_version": monitor.reference_version,
            "threshold": monitor.threshold, "exit_threshold": monitor.exit_level,
            "false_alarm_rate": monitor.false_alarm_rate, "power_warning": self.power_warning,
            "window": self.policy.window, "min_samples": self.policy.min_samples,
            "window_seconds": self.policy.window_seconds, "rows_in_window": monitor.rows,
            "window_started_at": monitor.window_started, "consecutive": st.consecutive, "windows": st.windows,
            "triggers": st.triggers, "last_trigger_at": st.last_trigger_at,
            "cooldown_s": self.policy.cooldown_s, "on_trigger": self.policy.on_trigger.action,
            "last_window": msgspec.to_builtins(st.last) if st.last else None,
            "last_delivery": msgspec.to_builtins(self.last_outcome) if self.last_outcome else None,
        }

    def bin_samples(self) -> Iterable[tuple[str, dict[str, str], float]]:
        """Scrape-time samples: cumulative bin counters and the smoothed reference fractions."""
        monitor = self.monitor
        if monitor is None:
            return
        total = monitor.total
        for j, feature in enumerate(monitor.names):
            k = len(monitor.edges[j]) + 1
            expected = smoothed_expected(monitor.expected[j], monitor.reference_n[j])
            for b in range(k + 1):
                label = "missing" if b == k else str(b)
                labels = {"model": self.model, "feature": feature, "bin": label}
                yield "inferloop_feature_bin_total", labels, float(total[j, b])
                yield "inferloop_feature_reference_fraction", labels, float(expected[b])


async def drift_timer(watches: list[DriftWatch], interval: float = 1.0) -> None:
    """Close windows and fire triggers for every watched model, once a second."""
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        for watch in watches:
            try:
                watch.tick(now)
            except Exception:  # noqa: BLE001 - one model's monitor must not stop the others
                log.exception("drift evaluation failed for %s", watch.model)

