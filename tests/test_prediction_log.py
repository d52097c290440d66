"""Prediction log: records come back from both sinks, backpressure and sink failures drop and count."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from inferloop.gateway.shadow.prediction_log import LocalDirSink, PredictionLog, PredictionRecord, StoreSink
from inferloop.registry.store import open_store


def _record(i: int, model: str = "m") -> PredictionRecord:
    return PredictionRecord(time=time.time(), request_id=f"r{i}", model=model, primary_version=1,
                            primary_output=[[float(i)]], primary_latency_ms=1.0, inputs=[[1.0, 2.0]], mirrored=True,
                            shadow_version=2, shadow_output=[[float(i) + 0.5]], shadow_latency_ms=2.0)


def _read_jsonl(paths) -> list[dict]:
    return [json.loads(line) for p in paths for line in p.read_text().splitlines()]


def test_local_dir_sink_round_trip_and_roll(tmp_path) -> None:
    async def go() -> None:
        plog = PredictionLog(LocalDirSink(tmp_path, max_file_bytes=20_000), batch_size=100, flush_interval=0.05)
        plog.start()
        for i in range(1000):
            plog.submit(_record(i))
            if i % 100 == 0:
                await asyncio.sleep(0)
        await plog.close()
        assert plog.written == 1000 and plog.dropped == 0

    asyncio.run(go())
    files = sorted(tmp_path.rglob("*.jsonl"))
    assert len(files) > 1  # rolled by size
    rows = _read_jsonl(files)
    assert sorted(r["request_id"] for r in rows) == sorted(f"r{i}" for i in range(1000))
    assert all(r["shadow_output"][0][0] == r["primary_output"][0][0] + 0.5 for r in rows)


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_store_sink_round_trip(backend, tmp_path, request) -> None:
    if backend == "s3":
        server = request.getfixturevalue("moto_server")
        uri = f"s3://{server.create_bucket()}/inferloop"
    else:
        uri = f"file://{tmp_path}/logs"

    async def go() -> list[dict]:
        plog = PredictionLog(StoreSink(open_store(uri)), batch_size=50, flush_interval=10)
        for i in range(120):
            plog.submit(_record(i, model="churn"))
        await plog.close()  # the shutdown flush writes what was accepted
        store = open_store(uri)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        names = await store.list_children(f"logs/churn/{day}/")
        rows = []
        for n in names:
            rows += [json.loads(x) for x in (await store.get(f"logs/churn/{day}/{n}")).data.splitlines()]
        await store.close()
        return rows

    rows = asyncio.run(go())
    assert sorted(r["request_id"] for r in rows) == sorted(f"r{i}" for i in range(120))


class _FailingSink:
    async def write(self, model: str, day: str, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    async def close(self) -> None:
        return None


def test_backpressure_and_failing_sink_drop_and_count() -> None:
    drops: list[int] = []

    async def go() -> PredictionLog:
        plog = PredictionLog(_FailingSink(), max_pending=100, batch_size=1000, on_drop=drops.append)
        accepted = sum(plog.submit(_record(i)) for i in range(150))
        assert accepted == 100 and len(plog._pending) == 100  # bounded memory
        await plog.close()
        return plog

    plog = asyncio.run(go())
    assert plog.dropped == 150 and sum(drops) == 150 and plog.written == 0
