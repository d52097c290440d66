"""Lifespan managers: one async context manager per resource, entered in this order and left in
reverse (Litestar does both). Each one attaches what it starts to the `DataPlane` and undoes it:

    registry client + event recorder → device executors → stages and pollers → batchers → heap freeze

Stopping therefore runs: unfreeze, batchers run what is queued, pollers are cancelled and awaited
and every slot released, executor threads joined, pending audit events flushed, registry closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from inferloop.gateway.serving.batcher import MicroBatcher
from inferloop.gateway.serving.blob_cache import BlobCache
from inferloop.gateway.serving.dataplane import PRIMARY_STAGE, DataPlane, ServedModel
from inferloop.gateway.serving.device import DeviceExecutor, resolve_device
from inferloop.gateway.serving.events import EventRecorder
from inferloop.gateway.serving.loader import SlotLoader
from inferloop.gateway.serving.poller import StagePoller
from inferloop.gateway.serving.stage import ModelStage
from inferloop.registry import AsyncRegistry, Unavailable

if TYPE_CHECKING:
    from litestar import Litestar

log = logging.getLogger("inferloop.gateway")

Lifespan = Callable[["Litestar"], AbstractAsyncContextManager[None]]


def registry_client(plane: DataPlane) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        cfg = plane.settings.registry
        registry = AsyncRegistry.open(cfg.uri, s3_endpoint=cfg.s3_endpoint)
        try:
            await registry.check()
        except Unavailable as exc:  # serve what can be loaded later; readiness reports the rest
            log.error("registry %s is not reachable at start-up (%s); pollers will keep trying", cfg.uri, exc)
        plane.registry = registry
        plane.events = EventRecorder(registry)
        try:
            yield
        finally:
            await plane.events.aclose()
            await registry.close()
            plane.registry = plane.events = None

    return manage


def device_executors(plane: DataPlane) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        runtime = plane.settings.runtime
        plane.device = resolve_device(runtime.device)
        plane.infer_executor = DeviceExecutor(plane.device, "infer", runtime.torch_threads)
        plane.load_executor = DeviceExecutor(plane.device, "load", runtime.torch_threads)
        log.info("serving on %s", plane.device)
        try:
            yield
        finally:
            for executor in (plane.infer_executor, plane.load_executor):
                await asyncio.to_thread(executor.shutdown)

    return manage


SHADOW_STAGE = "shadow"


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait until every one has finished."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def stages_and_pollers(plane: DataPlane) -> Lifespan:
    """One `ModelStage` and one `StagePoller` task per (model, stage): production, and shadow when
    shadow traffic is on (same load/verify/swap path; no standby cache, a shadow is rarely swapped back)."""

    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        assert plane.registry is not None and plane.events is not None and plane.load_executor is not None
        settings = plane.settings
        blobs = BlobCache(plane.registry, settings.runtime.cache_dir, settings.runtime.cache_max_bytes)
        loader = SlotLoader(blobs, plane.load_executor, plane.device)
        tasks: list[asyncio.Task[None]] = []
        for name in dict.fromkeys(settings.models):  # a name given twice is served once
            model = plane.models.setdefault(name, ServedModel(name, policy=plane.policies.get(name)))
            for stage_name in (PRIMARY_STAGE, SHADOW_STAGE) if settings.shadow.enabled else (PRIMARY_STAGE,):
                stage = ModelStage(name, stage_name, registry=plane.registry, loader=loader, memory=plane.memory,
                                   events=plane.events, metrics=plane.metrics,
                                   cache_versions=settings.runtime.cache_versions if stage_name == PRIMARY_STAGE else 0,
                                   headroom_bytes=settings.runtime.load_headroom_bytes)
                poller = StagePoller(plane.registry, stage, settings.registry, plane.metrics)
                model.stages[stage_name], model.pollers[stage_name] = stage, poller
                tasks.append(asyncio.get_running_loop().create_task(poller.run(), name=f"poll-{name}-{stage_name}"))
        try:
            yield
        finally:
            await cancel_all(tasks)
            for model in plane.models.values():
                for stage in model.stages.values():
                    await stage.close()
            plane.models.clear()

    return manage


def batchers(plane: DataPlane) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        assert plane.infer_executor is not None
        for model in plane.models.values():
            model.batcher = MicroBatcher(model.primary, plane.infer_executor, plane.settings.batching, plane.metrics)
            model.batcher.start()
        try:
            yield
        finally:
            for model in plane.models.values():
                if model.batcher is not None:
                    await model.batcher.stop()

    return manage


def frozen_heap(plane: DataPlane) -> Lifespan:
    """After start-up, move every object alive (torch's ~200k among them) to the permanent
    generation: full collections then skip them, which keeps queued requests from stalling."""

    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        enabled = plane.settings.server.gc_freeze
        if enabled:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if enabled:
                gc.unfreeze()

    return manage
