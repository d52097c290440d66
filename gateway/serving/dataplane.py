"""`DataPlane`: the gateway's service object. It owns inference, readiness, metadata and the admin
operations; it knows nothing of HTTP (route handlers translate, `error_responses` maps errors).

Its resources (registry client, executors, stages, pollers, batchers) are attached by the app's
lifespan managers (`inferloop.gateway.lifespan`), which start and stop them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from inferloop.gateway.errors import ModelNotReady, UnknownModel
from inferloop.gateway.transport.protocol import model_metadata

if TYPE_CHECKING:
    import numpy as np
    from inferloop.gateway.drift.watch import DriftWatch
    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.batcher import BatchObserver, MicroBatcher, Prediction
    from inferloop.gateway.serving.device import DeviceExecutor, DeviceMemory
    from inferloop.gateway.serving.events import EventRecorder
    from inferloop.gateway.serving.poller import StagePoller
    from inferloop.gateway.serving.slot import ModelSignature
    from inferloop.gateway.serving.stage import ModelStage
    from inferloop.gateway.settings import GatewaySettings
    from inferloop.gateway.shadow.mirror import ShadowMirror
    from inferloop.gateway.shadow.prediction_log import PredictionLog
    from inferloop.registry import AsyncRegistry, StagePointer

    from inferloop.policy import Policy

PRIMARY_STAGE = "production"


@dataclass
class ServedModel:
    """Everything the gateway runs for one model name; `stages` and `pollers` are keyed by stage."""

    name: str
    stages: dict[str, ModelStage] = field(default_factory=dict)
    pollers: dict[str, StagePoller] = field(default_factory=dict)
    batcher: MicroBatcher | None = None  # the primary (production) batcher
    policy: Policy | None = None  # its policy file, if the gateway was given a policies directory
    mirror: ShadowMirror | None = None  # shadow traffic (when shadow is enabled)
    drift: DriftWatch | None = None  # streaming PSI and retrain trigger (when drift is enabled)

    @property
    def primary(self) -> ModelStage:
        return self.stages[PRIMARY_STAGE]


class DataPlane:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics, memory: DeviceMemory) -> None:
        self.settings = settings
        self.metrics = metrics
        self.memory = memory
        self.models: dict[str, ServedModel] = {}
        self.registry: AsyncRegistry | None = None
        self.events: EventRecorder | None = None
        self.device = "cpu"
        self.infer_executor: DeviceExecutor | None = None
        self.load_executor: DeviceExecutor | None = None
        self.shadow_executor: DeviceExecutor | None = None
        self.prediction_log: PredictionLog | None = None
        self.policies: dict[str, Policy] = {}

    # -- inference ------------------------------------------------------------------------------
    def served(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"model {name!r} is not served by this gateway (serving: "
                               f"{', '.join(sorted(self.models)) or 'none'})")
        return model

    def signature(self, model: ServedModel) -> ModelSignature:
        sig = model.primary.signature
        if sig is None:
            raise ModelNotReady(f"model {model.name!r} has no {PRIMARY_STAGE} version loaded yet")
        return sig

    async def infer(self, model: ServedModel, rows: np.ndarray, request_id: str) -> Prediction:
        assert model.batcher is not None
        return await model.batcher.submit(rows, request_id)

    def observe(self, name: str, observer: BatchObserver) -> Callable[[], None]:
        """Register a primary-batch observer (see `inferloop.gateway.serving.batcher`); returns a function that removes it."""
        batcher = self.served(name).batcher
        assert batcher is not None
        batcher.observers.append(observer)
        return lambda: batcher.observers.remove(observer)

    # -- readiness and metadata -----------------------------------------------------------------
    def model_ready(self, name: str) -> bool:
        return self.served(name).primary.current is not None

    def ready(self) -> bool:
        return bool(self.models) and all(m.primary.current is not None for m in self.models.values())

    def serving_versions(self) -> dict[str, int | None]:
        return {name: m.primary.serving_version for name, m in self.models.items()}

    def metadata(self, name: str) -> tuple[int, dict[str, Any]]:
        model = self.served(name)
        slot = model.primary.current
        if slot is None:
            raise ModelNotReady(f"model {name!r} has no {PRIMARY_STAGE} version loaded yet")
        return slot.version, model_metadata(name, slot.version, slot.signature, PRIMARY_STAGE)

    def live_state(self) -> Iterable[tuple[str, dict[str, str], float]]:
        """Scrape-time gauges: slots per lifecycle state, rows queued per batcher."""
        for name, model in self.models.items():
            for stage_name, stage in model.stages.items():
                counts: dict[str, int] = {}
                for slot in stage.slots():
                    counts[str(slot.state)] = counts.get(str(slot.state), 0) + 1
                for state, count in counts.items():
                    yield "inferloop_model_slots", {"model": name, "stage": stage_name, "state": state}, count
            if model.batcher is not None:
                yield "inferloop_batch_queue_rows", {"model": name, "role": model.batcher.role}, \
                    model.batcher.queued_rows
        yield from self.drift_samples()

    # -- admin ----------------------------------------------------------------------------------
    def _registry(self) -> AsyncRegistry:
        if self.registry is None:
            raise ModelNotReady("the registry client is not started")
        return self.registry

    async def promote(self, name: str, version: int, stage: str, *, reason: str, actor: str,
                      expected_version: Any) -> dict[str, Any]:
        model = self.served(name)
        # UNSET: move whatever is there; None: only if there is no pointer yet; N: only from version N
        kwargs = {} if expected_version is msgspec.UNSET else {"expected_version": expected_version}
        pointer = await self._registry().promote(name, version, stage, actor=actor, reason=reason,
                                                 details={"via": "gateway"}, **kwargs)
        return await self._settle(model, stage, pointer, actor)

    async def rollback(self, name: str, stage: str, *, to_version: int | None, reason: str,
                       actor: str) -> dict[str, Any]:
        model = self.served(name)
        pointer = await self._registry().rollback(name, stage, to_version=to_version, actor=actor, reason=reason)
        return await self._settle(model, stage, pointer, actor)

    async def _settle(self, model: ServedModel, stage_name: str, pointer: StagePointer, actor: str) -> dict[str, Any]:
        """After a pointer move, make this gateway apply it now and wait (bounded) until it serves it,
        so the answer says what is being served, not only what the registry says."""
        result: dict[str, Any] = {"model": model.name, "stage": stage_name, "version": pointer.version,
                                  "previous_version": pointer.previous_version, "actor": actor}
        stage, poller = model.stages.get(stage_name), model.pollers.get(stage_name)
        if stage is None or poller is None:
            result["serving"] = None  # this gateway does not serve that stage
            return result
        target = pointer.version
        seq_before = stage.failures[-1].seq if stage.failures else 0

        def settled() -> bool:
            if stage.serving_version == target:
                return True
            last = stage.failures[-1] if stage.failures else None
            return last is not None and last.seq > seq_before and last.version == target

        poller.poke()
        await stage.wait_until(settled, self.settings.server.admin_wait_s)
        last = stage.failures[-1] if stage.failures else None
        failed = last is not None and last.seq > seq_before and last.version == target
        result["serving"] = {"applied": stage.serving_version == target, "version": stage.serving_version,
                             "error": last.error if failed and last else None}
        # the answer reports a swap or a failed load only once its audit event (`swapped`, `load_failed`)
        # is in the registry, so a caller reading history right after sees it
        await stage.events.flush(self.settings.server.admin_wait_s)
        return result

    # -- shadow and drift ---------------------------------------------------------------------
    def shadow_report(self, name: str) -> dict[str, Any]:
        model = self.served(name)
        if model.mirror is None:
            raise ModelNotReady(f"shadow traffic is disabled on this gateway for {name!r}")
        return model.mirror.report()

    async def set_shadow_sample_rate(self, name: str, rate: float, *, actor: str, reason: str) -> dict[str, Any]:
        """Change this gateway's shadow sampling rate; recorded in the audit log first, like every admin action
        (if the registry cannot take the record, nothing changes)."""
        model = self.served(name)
        if model.mirror is None:
            raise ModelNotReady(f"shadow traffic is disabled on this gateway for {name!r}")
        previous = model.mirror.sample_rate
        await self._registry().append_event(name, "sampling_changed", actor=actor, reason=reason, stage="shadow",
                                            details={"sample_rate": rate, "previous": previous})
        model.mirror.sample_rate = rate
        return {"model": name, "sample_rate": rate, "previous": previous, "actor": actor}

    def drift_state(self, name: str) -> dict[str, Any]:
        model = self.served(name)
        if model.drift is None:
            raise ModelNotReady(f"drift monitoring is disabled on this gateway for {name!r}")
        return model.drift.state()

    def drift_samples(self) -> Iterable[tuple[str, dict[str, str], float]]:
        for model in self.models.values():
            if model.drift is not None:
                yield from model.drift.bin_samples()

    def status(self, name: str) -> dict[str, Any]:
        model = self.served(name)
        stages = {}
        for stage_name, stage in model.stages.items():
            info = stage.describe()
            poller = model.pollers.get(stage_name)
            if poller is not None:
                info.update(poller.describe())
            stages[stage_name] = info
        batcher = model.batcher
        return {
            "model": name,
            "device": self.device,
            "ready": model.primary.current is not None,
            "stages": stages,
            "batching": {"enabled": self.settings.batching.enabled, "queued_rows": batcher.queued_rows,
                         "batches": batcher.batches, "observers": [type(o).__name__ for o in batcher.observers]}
            if batcher is not None else None,
        }
