"""Lifespan managers for the closed-loop features, entered after the batchers:

    prediction log → shadow mirrors and their evaluator → drift watches and their timer

and left in reverse: drift deliveries cancelled, mirrors drain their queues, and last the prediction
log flushes every record it accepted (so SIGTERM loses none). The shadow stages themselves belong to
`stages_and_pollers`, like production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import msgspec
from inferloop.gateway.drift.watch import DriftWatch, drift_timer
from inferloop.gateway.lifespan import SHADOW_STAGE, cancel_all
from inferloop.gateway.serving.device import DeviceExecutor
from inferloop.gateway.shadow.mirror import ShadowMirror, auto_promote_loop
from inferloop.gateway.shadow.prediction_log import LocalDirSink, PredictionLog, StoreSink

from inferloop.policy import MonitorPolicy, ShadowPolicy, load_policies

if TYPE_CHECKING:
    from inferloop.gateway.lifespan import Lifespan
    from inferloop.gateway.serving.dataplane import DataPlane
    from litestar import Litestar

    from inferloop.policy import Policy

log = logging.getLogger("inferloop.gateway")


def read_policies(directory: str | None, models: tuple[str, ...]) -> dict[str, Policy]:
    """The policies of the served models (a bad policy file fails start-up with its message)."""
    if not directory:
        return {}
    found = load_policies(directory)
    return {name: found[name][1] for name in models if name in found}


def prediction_log(plane: DataPlane) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        target = plane.settings.shadow.prediction_log
        plane.prediction_log = None
        if target:
            if "://" in target and not target.startswith("file://"):
                from inferloop.registry.store import open_store

                sink = StoreSink(open_store(target, s3_endpoint=plane.settings.registry.s3_endpoint))
            else:
                sink = LocalDirSink(target.removeprefix("file://"))
            dropped = plane.metrics.prediction_log_dropped
            plane.prediction_log = PredictionLog(sink, on_drop=dropped.inc)
            plane.prediction_log.start()
        try:
            yield
        finally:
            if plane.prediction_log is not None:
                await plane.prediction_log.close()
                plane.prediction_log = None

    return manage


def shadow_mirrors(plane: DataPlane) -> Lifespan:
    """A mirror per model onto its `shadow` stage (created by `stages_and_pollers`), and its evaluator."""

    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        settings = plane.settings
        if not settings.shadow.enabled:
            yield
            return
        assert plane.registry is not None and plane.events is not None
        plane.shadow_executor = DeviceExecutor(plane.device, "shadow", 1)
        tasks: list[asyncio.Task[None]] = []
        detach: list[Callable[[], None]] = []
        loop = asyncio.get_running_loop()
        for name, model in plane.models.items():
            primary = model.primary
            rules = model.policy.shadow if model.policy and model.policy.shadow else ShadowPolicy()
            mirror = ShadowMirror(name, model.stages[SHADOW_STAGE], plane.shadow_executor, settings.shadow, rules,
                                  plane.metrics, plane.prediction_log, primary)
            model.mirror = mirror
            mirror.start()
            detach.append(plane.observe(name, mirror))
            tasks.append(loop.create_task(auto_promote_loop(mirror, plane.registry, plane.events,
                                                            model.pollers[SHADOW_STAGE],
                                                            model.pollers[primary.stage],
                                                            settings.shadow.evaluate_interval_s),
                                          name=f"shadow-eval-{name}"))
        try:
            yield
        finally:
            await cancel_all(tasks)
            for remove in detach:
                remove()
            for model in plane.models.values():
                if model.mirror is not None:
                    await model.mirror.stop()
                    model.mirror = None
            await asyncio.to_thread(plane.shadow_executor.shutdown)
            plane.shadow_executor = None

    return manage


def drift_watches(plane: DataPlane) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        settings = plane.settings
        if not settings.drift.enabled:
            yield
            return
        import httpx

        assert plane.events is not None
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
        watches: list[DriftWatch] = []
        detach: list[Callable[[], None]] = []
        for name, model in plane.models.items():
            configured = model.policy.monitor if model.policy else None
            policy = configured or MonitorPolicy()
            if policy.on_trigger.action == "retrain" and policy.on_trigger.url is None and settings.drift.trainer_url:
                policy = msgspec.structs.replace(
                    policy, on_trigger=msgspec.structs.replace(policy.on_trigger, url=settings.drift.trainer_url))
            # Without a monitor: section drift is measured and recorded, but nothing is triggered.
            watch = DriftWatch(name, policy, model.primary, plane.metrics, plane.events, http,
                               trigger_enabled=configured is not None)
            model.drift = watch
            detach.append(plane.observe(name, watch))
            watches.append(watch)
        timer = asyncio.get_running_loop().create_task(drift_timer(watches, settings.drift.evaluate_interval_s),
                                                       name="drift-timer")
        try:
            yield
        finally:
            await cancel_all([timer])
            for remove in detach:
                remove()
            for model in plane.models.values():
                if model.drift is not None:
                    await model.drift.close()
                    model.drift = None
            await http.aclose()

    return manage
