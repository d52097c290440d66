"""`assemble`: build a gateway's `DataPlane` complete, before anything runs.

For every served model: a production stage and poller (plus a shadow stage and poller when shadow
traffic is on), the primary micro-batcher, a shadow part and a drift part (`disabled` stand-ins when
those features are off). Nothing here starts a task, opens a connection or loads a model: the
lifespan managers (`inferloop.gateway.lifespan`) do that, in order, and undo it in reverse.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from inferloop.gateway.disabled import DriftDisabled, ShadowDisabled
from inferloop.gateway.drift.watch import DriftWatch
from inferloop.gateway.metrics import GatewayMetrics
from inferloop.gateway.serving.batcher import MicroBatcher
from inferloop.gateway.serving.blob_cache import BlobCache
from inferloop.gateway.serving.change_feed import ChangeFeed
from inferloop.gateway.serving.dataplane import (
    PRIMARY_STAGE,
    SHADOW_STAGE,
    DataPlane,
    DriftPart,
    ServedModel,
    ShadowPart,
)
from inferloop.gateway.serving.device import DeviceExecutor, DeviceMemory, resolve_device
from inferloop.gateway.serving.events import EventRecorder
from inferloop.gateway.serving.loader import SlotLoader
from inferloop.gateway.serving.poller import StagePoller
from inferloop.gateway.serving.stage import ModelStage
from inferloop.gateway.settings import GatewaySettings
from inferloop.gateway.shadow.mirror import ShadowMirror
from inferloop.gateway.shadow.prediction_log import LocalDirSink, PredictionLog, StoreSink
from inferloop.policy import MonitorPolicy, Policy, ShadowPolicy, load_policies
from inferloop.registry import AsyncRegistry


@dataclass
class GatewayParts:
    """What the lifespans start and stop besides the data plane's models."""

    infer_executor: DeviceExecutor
    load_executor: DeviceExecutor
    shadow_executor: DeviceExecutor | None  # only with shadow traffic on
    prediction_log: PredictionLog | None  # only when a prediction log target is set
    drift_http: httpx.AsyncClient | None  # only with drift monitoring on
    mirrors: list[ShadowMirror] = field(default_factory=list)
    watches: list[DriftWatch] = field(default_factory=list)
    change_feed: ChangeFeed | None = None  # with `registry.change_record` on


def read_policies(directory: str | None, models: tuple[str, ...]) -> dict[str, Policy]:
    """The policies of the served models (a bad policy file fails start-up with its message)."""
    if not directory:
        return {}
    found = load_policies(directory)
    return {name: found[name][1] for name in models if name in found}


def _prediction_log(settings: GatewaySettings, metrics: GatewayMetrics) -> PredictionLog | None:
    target = settings.shadow.prediction_log
    if not target:
        return None
    if "://" in target and not target.startswith("file://"):
        from inferloop.registry.store import open_store

        sink: StoreSink | LocalDirSink = StoreSink(open_store(target, s3_endpoint=settings.registry.s3_endpoint))
    else:
        sink = LocalDirSink(target.removeprefix("file://"))
    return PredictionLog(sink, on_drop=metrics.prediction_log_dropped.inc)


def _monitor_policy(policy: Policy | None, settings: GatewaySettings) -> tuple[MonitorPolicy, bool]:
    """The model's monitor policy, with the gateway's trainer URL filled in; and whether a trip triggers
    anything (without a `monitor:` section drift is measured and recorded, but nothing is triggered)."""
    configured = policy.monitor if policy else None
    monitor = configured or MonitorPolicy()
    if monitor.on_trigger.action == "retrain" and monitor.on_trigger.url is None and settings.drift.trainer_url:
        monitor = msgspec.structs.replace(
            monitor, on_trigger=msgspec.structs.replace(monitor.on_trigger, url=settings.drift.trainer_url))
    return monitor, configured is not None


def assemble(settings: GatewaySettings, metrics: GatewayMetrics,
             memory: DeviceMemory | None = None) -> tuple[DataPlane, GatewayParts]:
    runtime, policies = settings.runtime, read_policies(settings.drift.policies, settings.models)
    counters: dict[str, Any] = {}

    def count_request(op: str) -> None:
        counter = counters.get(op)
        if counter is None:
            counter = counters[op] = metrics.registry_requests.labels(op)
        counter.inc()

    registry = AsyncRegistry.open(settings.registry.uri, s3_endpoint=settings.registry.s3_endpoint,
                                  count_requests=count_request)
    events = EventRecorder(registry)
    device = resolve_device(runtime.device)
    parts = GatewayParts(
        infer_executor=DeviceExecutor(device, "infer", runtime.torch_threads),
        load_executor=DeviceExecutor(device, "load", runtime.torch_threads),
        shadow_executor=DeviceExecutor(device, "shadow", 1) if settings.shadow.enabled else None,
        prediction_log=_prediction_log(settings, metrics),
        drift_http=httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0)) if settings.drift.enabled else None,
    )
    blobs = BlobCache(registry, runtime.cache_dir, runtime.cache_max_bytes)
    loader = SlotLoader(blobs, parts.load_executor, device)
    memory = memory or DeviceMemory()
    poll_limit = asyncio.Semaphore(settings.registry.max_concurrent_polls)
    models: dict[str, ServedModel] = {}
    for name in dict.fromkeys(settings.models):  # a name given twice is served once
        stages: dict[str, ModelStage] = {}
        pollers: dict[str, StagePoller] = {}
        for stage_name in (PRIMARY_STAGE, SHADOW_STAGE) if settings.shadow.enabled else (PRIMARY_STAGE,):
            # a shadow is rarely swapped back: no standby versions kept for it
            stage = ModelStage(name, stage_name, registry=registry, loader=loader, memory=memory, events=events,
                               metrics=metrics,
                               cache_versions=runtime.cache_versions if stage_name == PRIMARY_STAGE else 0,
                               headroom_bytes=runtime.load_headroom_bytes)
            stages[stage_name] = stage
            pollers[stage_name] = StagePoller(registry, stage, settings.registry, metrics, limit=poll_limit)
        primary = stages[PRIMARY_STAGE]
        policy = policies.get(name)
        shadow: ShadowPart = ShadowDisabled(name)
        if parts.shadow_executor is not None:
            rules = policy.shadow if policy and policy.shadow else ShadowPolicy()
            mirror = ShadowMirror(name, stages[SHADOW_STAGE], parts.shadow_executor, settings.shadow, rules, metrics,
                                  parts.prediction_log, primary, events)
            parts.mirrors.append(mirror)
            shadow = mirror
        drift: DriftPart = DriftDisabled(name)
        if parts.drift_http is not None:
            monitor, triggers = _monitor_policy(policy, settings)
            watch = DriftWatch(name, monitor, primary, metrics, events, parts.drift_http, trigger_enabled=triggers)
            parts.watches.append(watch)
            drift = watch
        batcher = MicroBatcher(primary, parts.infer_executor, settings.batching, metrics)
        models[name] = ServedModel(name, stages, pollers, batcher, shadow, drift, policy)
    plane = DataPlane(settings, metrics, registry=registry, events=events, device=device, models=models)
    if settings.registry.change_record:
        parts.change_feed = ChangeFeed(registry, [p for m in models.values() for p in m.pollers.values()],
                                       settings.registry)
    return plane, parts
