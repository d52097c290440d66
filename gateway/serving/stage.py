"""`ModelStage`: which loaded version answers for one (model, stage), and how it changes.

One lock per (model, stage) serialises changes; readers never take it. A change is
load → warm → verify → switch → drain → park (or release): the new version is fully ready before
the one reference `current` moves, batches already running finish on the old slot, and only then
is the old slot parked in a small in-memory cache (so a rollback swaps back without reloading) or
released (`torch.cuda.empty_cache()` on GPU). Any failure leaves `current` as it was.

On a GPU without room for both versions the order becomes drain → release → load ("safe order"):
queued requests wait for the new version (up to batching.swap_wait_s) instead of failing with
out-of-memory, and if the new version fails the old one is loaded again from the local blob copy.

Nothing here is production-specific: the same class serves `shadow` (or any stage) unchanged.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from inferloop.gateway.errors import LoadFailed
from inferloop.gateway.serving.slot import ModelSignature, ModelSlot
from inferloop.registry import RegistryError
from inferloop.registry.failpoints import failpoint

if TYPE_CHECKING:
    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.device import DeviceMemory
    from inferloop.gateway.serving.events import EventRecorder
    from inferloop.gateway.serving.loader import SlotLoader
    from inferloop.registry import AsyncRegistry, StagePointer, VersionManifest

log = logging.getLogger("inferloop.gateway")

SwapListener = Callable[["ModelStage", "int | None", "int | None"], None]


@dataclass(frozen=True, slots=True)
class SwapRecord:
    from_version: int | None
    to_version: int | None
    at: float  # wall clock, for people
    reused: bool  # came from the in-memory cache, no reload
    safe_order: bool
    load_seconds: float
    trigger: str


@dataclass(frozen=True, slots=True)
class LoadFailure:
    version: int
    phase: str
    error: str
    at: float  # wall clock
    seq: int  # increases with every failure, so a waiter can tell a new one from an old one


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    version: int | None
    changed: bool
    failure: LoadFailure | None = None


class ModelStage:
    def __init__(self, name: str, stage: str, *, registry: AsyncRegistry, loader: SlotLoader, memory: DeviceMemory,
                 events: EventRecorder, metrics: GatewayMetrics, cache_versions: int, headroom_bytes: int) -> None:
        self.name = name
        self.stage = stage
        self.registry = registry
        self.loader = loader
        self.memory = memory
        self.events = events
        self.metrics = metrics
        self.cache_versions = cache_versions
        self.headroom_bytes = headroom_bytes
        self.current: ModelSlot | None = None
        self.signature: ModelSignature | None = None  # last served; kept through a safe-order switch
        self.switching = False  # True while nothing serves because of a safe-order switch
        self.listeners: list[SwapListener] = []
        self.swaps = 0
        self.loads = 0
        self.reuses = 0
        self.last_swap: SwapRecord | None = None
        self.failures: deque[LoadFailure] = deque(maxlen=10)
        self._failure_seq = 0
        self._standby: OrderedDict[int, ModelSlot] = OrderedDict()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._reported: tuple[int, str, str] | None = None

    @property
    def device(self) -> str:
        return self.loader.device

    @property
    def serving_version(self) -> int | None:
        slot = self.current
        return slot.version if slot is not None else None

    def slots(self) -> list[ModelSlot]:
        return ([self.current] if self.current is not None else []) + list(self._standby.values())

    # -- waiting for changes ------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return predicate()
        return True

    # -- changing version ---------------------------------------------------------------------
    async def apply(self, pointer: StagePointer | None, trigger: str = "") -> ApplyOutcome:
        """Make the stage serve `pointer`'s version (None: serve nothing). Never raises for a bad
        version: the failure is recorded, returned, and the current slot keeps serving."""
        async with self._lock:
            target = pointer.version if pointer is not None else None
            if target == self.serving_version:
                return ApplyOutcome(target, changed=False)
            try:
                if target is None:
                    previous = self.serving_version
                    await self._retire(self._switch(None))
                    self._record_swap(previous, None, reused=False, safe=False, seconds=0.0, trigger=trigger)
                    return ApplyOutcome(None, changed=True)
                assert pointer is not None
                return await self._change_to(pointer, trigger)
            except LoadFailed as exc:
                failure = self._record_failure(target or 0, exc)
                if self.device.startswith("cuda"):
                    await self.loader.executor.run(self._return_memory)  # what the failed load allocated
                return ApplyOutcome(self.serving_version, changed=False, failure=failure)
            finally:
                self._notify()

    async def _change_to(self, pointer: StagePointer, trigger: str) -> ApplyOutcome:
        version = pointer.version
        assert version is not None
        previous = self.serving_version
        slot = self._standby.pop(version, None)
        reused, safe = slot is not None, False
        if slot is None:
            manifest = await self._manifest(version, pointer.artifact_digest)
            safe = await self._needs_safe_order(manifest)
            slot = await (self._load_in_safe_order(manifest) if safe else self.loader.load(manifest, self.stage))
            self.loads += 1
        else:
            self.reuses += 1
        if previous is not None:
            failpoint("gateway.swap.before_switch")  # fault-injection tests kill a swap here
        old = self._switch(slot)
        self._record_swap(previous, version, reused=reused, safe=safe, seconds=0.0 if reused else slot.load_seconds,
                          trigger=trigger)
        await self._retire(old)
        return ApplyOutcome(version, changed=True)

    async def _manifest(self, version: int, digest: str) -> VersionManifest:
        try:
            manifest = await self.registry.get_manifest(self.name, version)
        except RegistryError as exc:
            raise LoadFailed(f"{self.name} v{version}: cannot read manifest: {exc}", "fetch") from exc
        if digest and manifest.artifact.digest != digest:
            raise LoadFailed(f"{self.name} v{version}: the {self.stage} pointer names artifact {digest[:12]}… but the "
                             f"manifest names {manifest.artifact.digest[:12]}…", "fetch")
        return manifest

    def _switch(self, slot: ModelSlot | None) -> ModelSlot | None:
        """The swap itself: one reference assignment on the event loop, so no request sees half of it."""
        old = self.current
        if slot is not None:
            slot.serve()
            self.signature = slot.signature
        self.current = slot
        self._notify()
        self.metrics.serving(self.name, self.stage, old.version if old else None, slot.version if slot else None)
        for listener in list(self.listeners):
            try:
                listener(self, old.version if old else None, slot.version if slot else None)
            except Exception:  # noqa: BLE001 - a listener must not break a swap
                log.exception("swap listener failed for %s %s", self.name, self.stage)
        return old

    async def _retire(self, old: ModelSlot | None) -> None:
        """Wait for the batches still running on `old`, then park it for a quick swap back or release it."""
        if old is None:
            return
        old.start_draining()
        await old.drained()
        if self.cache_versions <= 0:
            await self._release(old)
            return
        old.park()
        self._standby[old.version] = old
        while len(self._standby) > self.cache_versions:
            _, victim = self._standby.popitem(last=False)
            await self._release(victim)

    async def _release(self, slot: ModelSlot) -> None:
        slot.release()
        # on every device: an exported program's graph module sits in reference cycles, so without a
        # collection its weights stay until a full collection happens to run (RSS grew by a model per
        # swap on CPU: loadtests/bench_large_swap)
        await self.loader.executor.run(self._return_memory)

    def _return_memory(self) -> None:
        gc.collect()  # modules caught in reference cycles would otherwise keep their tensors
        self.memory.return_cached(self.device)

    # -- memory -------------------------------------------------------------------------------
    async def _needs_safe_order(self, manifest: VersionManifest) -> bool:
        free = self.memory.free_bytes(self.device)
        if free is None:
            return False
        need = manifest.artifact.size + self.headroom_bytes
        while free < need and self._standby:
            _, victim = self._standby.popitem(last=False)
            log.info("%s %s: releasing cached v%s to make room for v%s", self.name, self.stage, victim.version,
                     manifest.version)
            await self._release(victim)
            free = self.memory.free_bytes(self.device) or 0
        if free >= need or self.current is None:
            return False
        log.warning("%s %s: v%s needs about %d MiB on %s but only %d MiB are free beside v%s; switching in the safe "
                    "order (drain, release, load): requests wait for the new version instead of failing",
                    self.name, self.stage, manifest.version, need >> 20, self.device, free >> 20, self.current.version)
        return True

    async def _load_in_safe_order(self, manifest: VersionManifest) -> ModelSlot:
        old = self.current
        assert old is not None
        self.switching = True
        try:
            self._switch(None)
            self._notify()
            old.start_draining()
            await old.drained()
            await self._release(old)
            try:
                return await self.loader.load(manifest, self.stage)
            except LoadFailed:
                await self._restore(old)
                raise
        finally:
            self.switching = False

    async def _restore(self, old: ModelSlot) -> None:
        try:
            restored = await self.loader.load(old.manifest, self.stage)
        except LoadFailed as exc:
            log.error("%s %s: could not restore v%s after a failed safe-order switch: %s; nothing serves until a "
                      "load succeeds", self.name, self.stage, old.version, exc)
            return
        self._switch(restored)

    # -- records ------------------------------------------------------------------------------
    def _record_swap(self, previous: int | None, version: int | None, *, reused: bool, safe: bool, seconds: float,
                     trigger: str) -> None:
        self.swaps += 1
        self.last_swap = SwapRecord(previous, version, time.time(), reused, safe, round(seconds, 4), trigger)
        self._reported = None
        self.metrics.swaps.labels(self.name, self.stage).inc()
        log.info("%s %s: %s (%s%s)", self.name, self.stage,
                 "now serving nothing" if version is None else f"now serving v{version}",
                 "first version" if previous is None else f"was v{previous}",
                 "" if version is None else ", from memory" if reused else f", loaded in {seconds:.3f}s")
        self.events.record(self.name, "swapped", stage=self.stage, version=version, from_version=previous,
                           details={"reused": reused, "safe_order": safe, "load_seconds": round(seconds, 4),
                                    "trigger": trigger})

    def _record_failure(self, version: int, exc: LoadFailed) -> LoadFailure:
        self._failure_seq += 1
        failure = LoadFailure(version, exc.phase, str(exc), time.time(), self._failure_seq)
        self.failures.append(failure)
        self.metrics.load_failures.labels(self.name, self.stage, exc.phase).inc()
        key = (version, exc.phase, str(exc))
        if key != self._reported:  # retries of the same failure are counted, not logged to the audit trail again
            self._reported = key
            log.error("%s %s: v%s not loaded (%s); still serving v%s", self.name, self.stage, version, exc,
                      self.serving_version)
            self.events.record(self.name, "load_failed", stage=self.stage, version=version,
                               reason=str(exc)[:500], details={"phase": exc.phase, "serving": self.serving_version})
        return failure

    def describe(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "serving_version": self.serving_version,
            "switching": self.switching,
            "slots": [s.describe() for s in self.slots()],
            "swaps": self.swaps,
            "loads": self.loads,
            "reuses": self.reuses,
            "last_swap": asdict(self.last_swap) if self.last_swap else None,
            "errors": [asdict(f) for f in self.failures],
        }

    async def close(self) -> None:
        """Release every slot (after the batchers have stopped)."""
        async with self._lock:
            old = self._switch(None)
            for slot in [*([old] if old else []), *self._standby.values()]:
                await self._release(slot)
            self._standby.clear()
            self._notify()
