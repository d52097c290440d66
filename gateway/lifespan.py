"""Lifespan managers: one async context manager per resource of an assembled gateway, entered in
this order and left in reverse (Litestar does both):

    registry check → pollers → batchers → prediction log → shadow mirrors and their evaluators
    → drift watches and their timer → heap freeze → gRPC listener (when --grpc-port is set)

Stopping therefore runs: gRPC drains its in-flight RPCs, unfreeze, drift deliveries cancelled, mirrors drain their queues, the
prediction log flushes every record it accepted (so SIGTERM loses none), batchers run what is
queued, pollers are cancelled and every slot released, executor threads joined, pending audit
events flushed, registry closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from inferloop.gateway.drift.watch import drift_timer
from inferloop.gateway.serving.dataplane import SHADOW_STAGE, DataPlane
from inferloop.gateway.shadow.mirror import auto_promote_loop
from inferloop.registry import NotFound, Unavailable

if TYPE_CHECKING:
    from litestar import Litestar

    from inferloop.gateway.assembly import GatewayParts
    from inferloop.gateway.transport.grpc_service import GrpcListener

log = logging.getLogger("inferloop.gateway")

Lifespan = Callable[["Litestar"], AbstractAsyncContextManager[None]]


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait until every one has finished."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def lifespans(plane: DataPlane, parts: GatewayParts) -> list[Lifespan]:
    return [registry_and_executors(plane, parts), pollers(plane, parts), batchers(plane), prediction_log(parts),
            shadow_mirrors(plane, parts), drift_watches(plane, parts), frozen_heap(plane)]


def registry_and_executors(plane: DataPlane, parts: GatewayParts) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        try:  # the gateway reads the registry: a missing one is reported, never created
            await plane.registry.store.check(create=False)
        except NotFound as exc:
            log.error("%s: nothing can be served until it exists (check --registry, INFERLOOP_REGISTRY or .inferloop/config.json); "
                      "pollers will keep looking", exc)
        except Unavailable as exc:  # serve what can be loaded later; readiness reports the rest
            log.error("registry %s is not reachable at start-up (%s); pollers will keep trying",
                      plane.registry.uri, exc)
        log.info("serving on %s", plane.device)
        try:
            yield
        finally:
            executors = [parts.infer_executor, parts.load_executor, parts.shadow_executor]
            for executor in executors:
                if executor is not None:
                    await asyncio.to_thread(executor.shutdown)
            await plane.events.aclose()
            await plane.registry.close()

    return manage


def pollers(plane: DataPlane, parts: GatewayParts) -> Lifespan:
    """One poller task per (model, stage), and the change feed that pokes them; on the way out every
    slot is released."""

    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(poller.run(), name=f"poll-{name}-{stage}")
                 for name, model in plane.models.items() for stage, poller in model.pollers.items()]
        if parts.change_feed is not None:
            tasks.append(loop.create_task(parts.change_feed.run(), name="change-feed"))
        try:
            yield
        finally:
            await cancel_all(tasks)
            for model in plane.models.values():
                for stage in model.stages.values():
                    await stage.close()

    return manage


def batchers(plane: DataPlane) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        for model in plane.models.values():
            model.batcher.start()
        try:
            yield
        finally:
            for model in plane.models.values():
                await model.batcher.stop()

    return manage


def prediction_log(parts: GatewayParts) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        if parts.prediction_log is not None:
            parts.prediction_log.start()
        try:
            yield
        finally:
            if parts.prediction_log is not None:
                await parts.prediction_log.close()

    return manage


def shadow_mirrors(plane: DataPlane, parts: GatewayParts) -> Lifespan:
    """Each mirror observes its model's primary batches, and an evaluator publishes its report (and
    promotes on evidence when the policy says so)."""

    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        detach: list[Callable[[], None]] = []
        for mirror in parts.mirrors:
            model = plane.models[mirror.model]
            mirror.start()
            detach.append(plane.observe(mirror.model, mirror))
            tasks.append(loop.create_task(
                auto_promote_loop(mirror, plane.registry, plane.events, model.pollers[SHADOW_STAGE],
                                  model.pollers[model.primary.stage], plane.settings.shadow.evaluate_interval_s),
                name=f"shadow-eval-{mirror.model}"))
        try:
            yield
        finally:
            await cancel_all(tasks)
            for remove in detach:
                remove()
            for mirror in parts.mirrors:
                await mirror.stop()

    return manage


def drift_watches(plane: DataPlane, parts: GatewayParts) -> Lifespan:
    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        detach = [plane.observe(watch.model, watch) for watch in parts.watches]
        timer = None
        if parts.watches:
            timer = asyncio.get_running_loop().create_task(
                drift_timer(parts.watches, plane.settings.drift.evaluate_interval_s), name="drift-timer")
        try:
            yield
        finally:
            if timer is not None:
                await cancel_all([timer])
            for remove in detach:
                remove()
            for watch in parts.watches:
                await watch.close()
            if parts.drift_http is not None:
                await parts.drift_http.aclose()

    return manage


def grpc_listener(listener: GrpcListener) -> Lifespan:
    """The OIP v2 gRPC listener (--grpc-port): entered last, so it takes RPCs only once everything it
    serves through runs; left first, so RPCs in flight drain while batchers still answer them. A port
    that cannot be bound fails start-up (REST never comes up without it)."""

    @contextlib.asynccontextmanager
    async def manage(_app: Litestar) -> AsyncIterator[None]:
        await listener.start()
        try:
            yield
        finally:
            await listener.stop()

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
