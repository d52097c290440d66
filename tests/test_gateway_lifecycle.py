"""Model slot lifecycle: load → warm → switch → drain → park/release, driven step by step with real
loaders, executors and registry. Slow loads and running batches are held on events, never on sleeps.
Plus the process-level guarantees: graceful SIGTERM and flat memory over 100 swaps."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferloop.gateway.errors import ModelNotReady
from inferloop.gateway.metrics import GatewayMetrics
from inferloop.gateway.serving.batcher import MicroBatcher
from inferloop.gateway.serving.blob_cache import BlobCache
from inferloop.gateway.serving.device import DeviceExecutor, DeviceMemory
from inferloop.gateway.serving.events import EventRecorder
from inferloop.gateway.serving.loader import SlotLoader
from inferloop.gateway.serving.slot import SlotState
from inferloop.gateway.serving.stage import ModelStage
from inferloop.gateway.settings import BatchingSettings
from inferloop.registry import AsyncRegistry, Registry, VersionManifest
from tests.gateway_harness import AUTH, TOKEN, GatewayProcess, eventually, infer_body
from tests.helpers import register_tiny

MODEL = "life"
ROW = np.full((1, 8), 0.5, dtype=np.float32)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


class GatedLoader(SlotLoader):
    """The real loader, held at its start until `gate` opens (to look at a stage mid-switch)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    async def load(self, manifest: VersionManifest, stage: str):
        self.waiting.set()
        await self.gate.wait()
        self.waiting.clear()
        return await super().load(manifest, stage)


class BudgetMemory(DeviceMemory):
    """A device with `budget` bytes, of which the stage's loaded slots use their footprint."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.stage: ModelStage | None = None

    def free_bytes(self, device: str) -> int | None:
        assert self.stage is not None
        return self.budget - sum(s.footprint_bytes for s in self.stage.slots() if s.runnable is not None)


class Rig:
    def __init__(self, registry: AsyncRegistry, stage: ModelStage, batcher: MicroBatcher, loader: GatedLoader,
                 infer: DeviceExecutor) -> None:
        self.registry, self.stage, self.batcher, self.loader, self.infer = registry, stage, batcher, loader, infer

    async def move(self, version: int):
        return await self.registry.promote(MODEL, version, "production", actor="test")

    async def serve(self, version: int):
        outcome = await self.stage.apply(await self.move(version), trigger="test")
        assert outcome.failure is None, outcome.failure
        return outcome


@contextlib.asynccontextmanager
async def rig(uri: str, *, cache_versions: int = 2, memory: DeviceMemory | None = None) -> AsyncIterator[Rig]:
    registry = AsyncRegistry.open(uri)
    metrics = GatewayMetrics()
    events = EventRecorder(registry)
    load_exec, infer_exec = DeviceExecutor("cpu", "load"), DeviceExecutor("cpu", "infer")
    loader = GatedLoader(BlobCache(registry, None, 1 << 30), load_exec, "cpu")
    stage = ModelStage(MODEL, "production", registry=registry, loader=loader, memory=memory or DeviceMemory(),
                       events=events, metrics=metrics, cache_versions=cache_versions, headroom_bytes=0)
    batcher = MicroBatcher(stage, infer_exec, BatchingSettings(max_delay_ms=0.0), metrics)
    batcher.start()
    try:
        yield Rig(registry, stage, batcher, loader, infer_exec)
    finally:
        await batcher.stop()
        await stage.close()
        await events.aclose()
        load_exec.shutdown()
        infer_exec.shutdown()
        await registry.close()


@pytest.fixture
def versions(tmp_path: Path) -> tuple[str, list[int]]:
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        return uri, [register_tiny(reg, MODEL, seed=s) for s in (1, 2, 3)]


def test_running_batches_finish_on_the_old_version_before_it_is_parked(versions) -> None:
    uri, (v1, v2, _) = versions

    async def scenario() -> None:
        async with rig(uri) as r:
            await r.serve(v1)
            old = r.stage.current
            hold = threading.Event()
            blocker = asyncio.ensure_future(r.infer.run(hold.wait))  # the device thread is busy
            running = asyncio.ensure_future(r.batcher.submit((ROW,), "in-flight"))
            await until(lambda: old.inflight == 1)  # its batch has taken v1
            r.loader.gate.clear()
            swap = asyncio.ensure_future(r.stage.apply(await r.move(v2)))
            await r.loader.waiting.wait()
            assert r.stage.current is old and old.state is SlotState.SERVING  # loading does not disturb serving
            r.loader.gate.set()
            assert await r.stage.wait_until(lambda: r.stage.serving_version == v2, 10)
            assert old.state is SlotState.DRAINING and not swap.done()  # switched, waiting for the batch
            after = asyncio.ensure_future(r.batcher.submit((ROW,), "after-switch"))
            hold.set()
            await blocker
            assert (await running).version == v1  # started on v1, finished on v1
            assert (await after).version == v2
            outcome = await swap
            assert outcome.changed and outcome.failure is None
            assert old.state is SlotState.STANDBY and old.inflight == 0 and old.runnable is not None

    asyncio.run(scenario())


def test_one_lock_per_stage_serialises_changes_and_the_cache_avoids_reloads(versions) -> None:
    uri, (v1, v2, v3) = versions

    async def scenario() -> None:
        async with rig(uri, cache_versions=1) as r:
            await r.serve(v1)
            r.loader.gate.clear()
            first = asyncio.ensure_future(r.stage.apply(await r.move(v2)))
            await r.loader.waiting.wait()
            second = asyncio.ensure_future(r.stage.apply(await r.move(v3)))
            await asyncio.sleep(0.05)
            assert not second.done() and r.stage.serving_version == v1  # queued behind the lock
            r.loader.gate.set()
            await asyncio.gather(first, second)
            assert r.stage.serving_version == v3 and r.stage.loads == 3
            slots = {s.version: s for s in r.stage.slots()}
            assert slots[v2].state is SlotState.STANDBY and v1 not in slots  # cache of one: v1 released
            await r.serve(v2)  # back to the cached one: no load
            assert r.stage.loads == 3 and r.stage.reuses == 1 and r.stage.last_swap.reused
            await r.stage.events.flush()
            swaps = await r.registry.history(MODEL, kinds={"swapped"})
            assert [(e.from_version, e.version) for e in swaps] == [(None, v1), (v1, v2), (v2, v3), (v3, v2)]
            assert swaps[-1].details["reused"] is True

    asyncio.run(scenario())


def test_without_room_for_two_versions_the_safe_order_makes_requests_wait(versions, tamper) -> None:
    uri, (v1, v2, v3) = versions
    with Registry.open(uri) as reg:
        size = reg.get_manifest(MODEL, v2).artifact.size
        digest3 = reg.get_manifest(MODEL, v3).artifact.digest

    async def scenario() -> None:
        memory = BudgetMemory(0)
        async with rig(uri, memory=memory) as r:
            memory.stage = r.stage
            memory.budget = 10 * size
            await r.serve(v1)
            old = r.stage.current
            memory.budget = size + old.footprint_bytes // 2  # room for one version, not two
            r.loader.gate.clear()
            swap = asyncio.ensure_future(r.stage.apply(await r.move(v2)))
            await r.loader.waiting.wait()
            # v1 is already drained and released before v2 loads; requests wait instead of failing
            assert r.stage.switching and r.stage.current is None and old.state is SlotState.RELEASED
            waiting = asyncio.ensure_future(r.batcher.submit((ROW,), "during-switch"))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            r.loader.gate.set()
            assert (await waiting).version == v2
            await swap
            assert r.stage.last_swap.safe_order and not r.stage.switching
            assert [s.version for s in r.stage.slots()] == [v2]  # nothing parked: no room
            # a failed safe-order switch puts the old version back
            tamper.overwrite(uri, f"blobs/sha256/{digest3[:2]}/{digest3}", b"garbage")
            outcome = await r.stage.apply(await r.move(v3))
            assert outcome.failure is not None and outcome.failure.phase == "fetch"
            assert r.stage.serving_version == v2
            assert (await r.batcher.submit((ROW,), "after-failure")).version == v2

    asyncio.run(scenario())


def test_a_cleared_stage_stops_serving_and_a_re_promotion_comes_back_from_memory(versions) -> None:
    uri, (v1, _, _) = versions

    async def scenario() -> None:
        async with rig(uri) as r:
            await r.serve(v1)
            slot = r.stage.current
            outcome = await r.stage.apply(await r.registry.clear(MODEL, "production", actor="test"))
            assert outcome.changed and r.stage.current is None and slot.state is SlotState.STANDBY
            with pytest.raises(ModelNotReady):
                await r.batcher.submit((ROW,), "nothing-serves")
            await r.serve(v1)
            assert r.stage.current is slot and r.stage.last_swap.reused and r.stage.loads == 1
            assert (await r.batcher.submit((ROW,), "back")).version == v1

    asyncio.run(scenario())


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(tmp_path: Path) -> None:
    """Observed: eight large requests (1024 rows each through a 1024×1024 MLP: each runs as its own
    batch, one after another) are in the gateway, most of them queued, when SIGTERM arrives; every
    one is answered 200 by v1, then the process exits 0 and stops listening."""
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        v1 = register_tiny(reg, MODEL, seed=1, hidden=(1024, 1024))
        reg.promote(MODEL, v1, "production")
    args = ["--registry", uri, "--model", MODEL, "--cache-dir", str(tmp_path / "c")]
    rows = np.random.default_rng(0).normal(size=(1024, 8)).astype(np.float32).tolist()
    with GatewayProcess(args) as gw:
        gw.wait_ready()
        answers: list[httpx.Response | Exception] = []

        def send() -> None:
            try:
                answers.append(httpx.post(f"{gw.url}/v2/models/{MODEL}/infer", json=infer_body(rows), timeout=60))
            except httpx.HTTPError as exc:
                answers.append(exc)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()

        def queued_rows() -> float:
            for line in gw.client.get("/metrics").text.splitlines():
                if line.startswith(f'inferloop_batch_queue_rows{{model="{MODEL}",role="primary"}}'):
                    return float(line.split()[-1])
            return 0.0

        eventually(lambda: queued_rows() >= 4 * 1024, 60, "requests queued behind a running batch")
        gw.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert gw.proc.wait(60) == 0, gw.collect_output()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gw.url}/v2/health/live", timeout=2)
    assert len(answers) == 8
    for a in answers:
        assert isinstance(a, httpx.Response) and a.status_code == 200, a
        assert a.headers["x-model-version"] == str(v1)


def test_a_hundred_swaps_keep_memory_flat(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:  # ~4 MB of weights each: a leaked model per swap would show at once
        versions = [register_tiny(reg, MODEL, seed=s, hidden=(1024, 1024)) for s in (1, 2, 3)]
        reg.promote(MODEL, versions[0], "production")
    args = ["--registry", uri, "--model", MODEL, "--cache-versions", "1", "--cache-dir", str(tmp_path / "c")]

    def swap(client: httpx.Client, version: int) -> None:
        r = client.post(f"/admin/models/{MODEL}/promote", json={"version": version}, headers=AUTH)
        assert r.status_code == 200 and r.json()["serving"]["applied"], r.text
        r = client.post(f"/v2/models/{MODEL}/infer", json=infer_body(ROW.tolist()))
        assert r.headers["x-model-version"] == str(version)

    with GatewayProcess(args, env={"INFERLOOP_ADMIN_TOKEN": TOKEN}) as gw:
        gw.wait_ready()
        gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body(ROW.tolist()))
        baseline = gw.rss_bytes()  # serving v1, nothing swapped yet
        for i in range(100):
            swap(gw.client, versions[(i + 1) % 3])
        final = gw.rss_bytes()
        stage = gw.status(MODEL)["stages"]["production"]
    growth = final / baseline - 1
    print(f"\nRSS {baseline / 2**20:.1f} MiB -> {final / 2**20:.1f} MiB after 100 swaps ({growth:+.1%})")
    assert stage["swaps"] == 101 and stage["loads"] == 101  # every swap loaded and released a version
    assert len(stage["slots"]) == 2  # the serving one and one cached
    assert growth < 0.10
