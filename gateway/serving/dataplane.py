"""`DataPlane`: the gateway's service object. It owns inference, readiness, metadata and the admin
operations; it knows nothing of HTTP (route handlers translate, `error_responses` maps errors).

It is built complete (`inferloop.gateway.assembly`): every served model has its stages, pollers,
batcher, a shadow part and a drift part (the `disabled` ones when the feature is off). The app's
lifespan managers (`inferloop.gateway.lifespan`) only start and stop what it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from inferloop.gateway.errors import ModelNotReady, UnknownModel
from inferloop.gateway.transport.protocol import model_metadata
from inferloop.registry import NotFound

if TYPE_CHECKING:
    import numpy as np

    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.batcher import BatchObserver, MicroBatcher, Prediction
    from inferloop.gateway.serving.events import EventRecorder
    from inferloop.gateway.serving.poller import StagePoller
    from inferloop.gateway.serving.slot import ModelSignature
    from inferloop.gateway.serving.stage import ModelStage
    from inferloop.gateway.settings import GatewaySettings
    from inferloop.policy import Policy
    from inferloop.registry import AsyncRegistry, StagePointer

PRIMARY_STAGE = "production"
SHADOW_STAGE = "shadow"


class ShadowPart(Protocol):
    """Shadow traffic for one model: `ShadowMirror`, or `ShadowDisabled` when it is off."""

    sample_rate: float

    def report(self) -> dict[str, Any]: ...


class DriftPart(Protocol):
    """Drift monitoring for one model: `DriftWatch`, or `DriftDisabled` when it is off."""

    def state(self) -> dict[str, Any]: ...

    def bin_samples(self) -> Iterable[tuple[str, dict[str, str], float]]: ...


@dataclass
class ServedModel:
    """Everything the gateway runs for one model name; `stages` and `pollers` are keyed by stage."""

    name: str
    stages: dict[str, ModelStage]
    pollers: dict[str, StagePoller]
    batcher: MicroBatcher  # the primary (production) batcher
    shadow: ShadowPart
    drift: DriftPart
    policy: Policy | None = None  # its policy file, if the gateway was given a policies directory

    @property
    def primary(self) -> ModelStage:
        return self.stages[PRIMARY_STAGE]


class DataPlane:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics, *, registry: AsyncRegistry,
                 events: EventRecorder, device: str, models: dict[str, ServedModel]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.events = events
        self.device = device
        self.models = models

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
            raise self._not_ready(model)
        return sig

    def _not_ready(self, model: ServedModel) -> Exception:
        if self._missing(model):  # 404, not "wait and retry": no version of it will load by waiting
            return NotFound(f"model {model.name!r} does not exist in the registry")
        return ModelNotReady(f"model {model.name!r} has no {PRIMARY_STAGE} version loaded yet")

    @staticmethod
    def _missing(model: ServedModel) -> bool:
        poller = model.pollers.get(PRIMARY_STAGE)
        return poller is not None and poller.model_exists is False and model.primary.current is None

    def missing_models(self) -> list[str]:
        """Served names with no version at all in the registry (a typo, or the wrong registry)."""
        return sorted(name for name, model in self.models.items() if self._missing(model))

    async def infer(self, model: ServedModel, inputs: tuple[np.ndarray, ...], request_id: str) -> Prediction:
        return await model.batcher.submit(inputs, request_id)

    def observe(self, name: str, observer: BatchObserver) -> Callable[[], None]:
        """Register a primary-batch observer (see `inferloop.gateway.serving.batcher`); returns a function that removes it."""
        observers = self.served(name).batcher.observers
        observers.append(observer)
        return lambda: observers.remove(observer)

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
            raise self._not_ready(model)
        platform = {"onnx": "onnxruntime_onnx", "torch.export": "pytorch_export"}.get(slot.manifest.artifact.format,
                                                                                       "pytorch")
        return slot.version, model_metadata(name, slot.version, slot.signature, PRIMARY_STAGE, platform)

    def live_state(self) -> Iterable[tuple[str, dict[str, str], float]]:
        """Scrape-time gauges: slots per lifecycle state, rows queued per batcher."""
        for name, model in self.models.items():
            for stage_name, stage in model.stages.items():
                counts: dict[str, int] = {}
                for slot in stage.slots():
                    counts[str(slot.state)] = counts.get(str(slot.state), 0) + 1
                for state, count in counts.items():
                    yield "inferloop_model_slots", {"model": name, "stage": stage_name, "state": state}, count
            yield "inferloop_batch_queue_rows", {"model": name, "role": model.batcher.role}, \
                model.batcher.queued_rows
        yield from self.drift_samples()

    # -- admin ----------------------------------------------------------------------------------
    async def promote(self, name: str, version: int, stage: str, *, reason: str, actor: str,
                      expected_version: Any) -> dict[str, Any]:
        model = self.served(name)
        # UNSET: move whatever is there; None: only if there is no pointer yet; N: only from version N
        kwargs = {} if expected_version is msgspec.UNSET else {"expected_version": expected_version}
        pointer = await self.registry.promote(name, version, stage, actor=actor, reason=reason,
                                                 details={"via": "gateway"}, **kwargs)
        return await self._settle(model, stage, pointer, actor)

    async def rollback(self, name: str, stage: str, *, to_version: int | None, reason: str,
                       actor: str) -> dict[str, Any]:
        model = self.served(name)
        pointer = await self.registry.rollback(name, stage, to_version=to_version, actor=actor, reason=reason)
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
        return self.served(name).shadow.report()

    async def set_shadow_sample_rate(self, name: str, rate: float, *, actor: str, reason: str) -> dict[str, Any]:
        """Change this gateway's shadow sampling rate; recorded in the audit log first, like every admin action
        (if the registry cannot take the record, nothing changes)."""
        model = self.served(name)
        previous = model.shadow.sample_rate  # a disabled shadow refuses here, before anything is recorded
        await self.registry.append_event(name, "sampling_changed", actor=actor, reason=reason, stage="shadow",
                                            details={"sample_rate": rate, "previous": previous})
        model.shadow.sample_rate = rate
        return {"model": name, "sample_rate": rate, "previous": previous, "actor": actor}

    def drift_state(self, name: str) -> dict[str, Any]:
        return self.served(name).drift.state()

    def drift_samples(self) -> Iterable[tuple[str, dict[str, str], float]]:
        for model in self.models.values():
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
                         "batches": batcher.batches, "observers": [type(o).__name__ for o in batcher.observers],
                         "forwards": dict(batcher.forwards), "wait": batcher.wait.describe()},
        }
