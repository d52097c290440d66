"""Micro-batching through a real server: work conservation (requests that arrive while the device
is busy share the next batch; a lone client never waits for company), batch limits, batching off,
and the observer hook that drift counting and shadow mirroring build on (it sees every batch; its
failures reach no one). The device thread is held with a gate, not slowed by sleeps, so which
requests share a batch is certain."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferloop.gateway.serving.batch_wait import BatchWait
from inferloop.gateway.serving.batcher import CompletedBatch, MicroBatcher
from inferloop.registry import Registry
from tests.gateway_harness import ThreadedGateway, eventually, infer_body, settings_for
from tests.helpers import register_tiny

MODEL = "batchy"


class Recorder:
    def __init__(self) -> None:
        self.batches: list[CompletedBatch] = []

    def on_batch(self, batch: CompletedBatch) -> None:
        self.batches.append(batch)


class Exploding:
    def on_batch(self, batch: CompletedBatch) -> None:
        raise RuntimeError("observer bug")


@pytest.fixture
def registry_with_model(tmp_path: Path) -> Iterator[tuple[str, int]]:
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        version = register_tiny(reg, MODEL, seed=4)
        reg.promote(MODEL, version, "production")
    yield uri, version


@contextmanager
def device_busy(batcher: MicroBatcher) -> Iterator[threading.Event]:
    """Occupy the batcher's device thread until the block ends, as one long forward would."""
    gate = threading.Event()
    held = batcher.executor.submit(gate.wait)
    try:
        yield gate
    finally:
        gate.set()
        held.result(30)


def concurrently(url: str, bodies: list[dict], ids: list[str], *, queued: MicroBatcher | None = None
                 ) -> list[httpx.Response]:
    """Send every body at once; with `queued`, hold its device thread until every request is waiting
    for it (the first batch taken, the rest queued behind it), then let them run."""
    answers: list[httpx.Response | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            barrier.wait()
            answers[i] = c.post(f"/v2/models/{MODEL}/infer", json=bodies[i], headers={"x-request-id": ids[i]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    if queued is None:
        for t in threads:
            t.start()
    else:
        with device_busy(queued):
            for t in threads:
                t.start()
            eventually(lambda: queued.queued_requests + queued.in_flight == len(bodies), 30,
                       "every request to be waiting for the busy device")
    for t in threads:
        t.join(60)
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


def test_observers_see_every_batch_and_their_errors_never_reach_a_response(registry_with_model, tmp_path) -> None:
    uri, version = registry_with_model
    settings = settings_for(uri, [MODEL], tmp_path, batching={"max_batch_size": 64})
    rng = np.random.default_rng(0)
    sizes = [1, 3, 1, 2, 1, 1, 5, 1, 1, 1, 2, 1]
    inputs = [rng.normal(size=(n, 8)).astype(np.float32) for n in sizes]
    ids = [f"req-{i}" for i in range(len(sizes))]
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        recorder = Recorder()
        gw.plane.observe(MODEL, Exploding())  # first in line: must not stop the recorder after it
        remove = gw.plane.observe(MODEL, recorder)
        batcher = gw.plane.models[MODEL].batcher
        answers = concurrently(gw.url, [infer_body(x.tolist()) for x in inputs], ids, queued=batcher)
        metrics = gw.client.get("/metrics").text
        remove()
        concurrently(gw.url, [infer_body(inputs[0].tolist())], ["after-removal"])
    assert all(a.status_code == 200 for a in answers)
    assert 'inferloop_batch_observer_errors_total{model="batchy",observer="Exploding"}' in metrics
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for batch in recorder.batches:
        assert batch.model == MODEL and batch.version == version and batch.role == "primary"
        assert batch.stage == "production" and batch.inference_seconds > 0
        assert batch.row_splits[0] == 0 and batch.row_splits[-1] == len(batch.inputs) == len(batch.outputs)
        assert len(batch.row_splits) == len(batch.request_ids) + 1
        for i, rid in enumerate(batch.request_ids):
            lo, hi = batch.row_splits[i], batch.row_splits[i + 1]
            seen[rid] = (batch.inputs[lo:hi], batch.outputs[lo:hi])
    assert sorted(seen) == sorted(ids)  # every request exactly once; the removed observer saw no more
    assert len(recorder.batches) == 2  # the batch that waited for the device, then all the others at once
    for rid, x, answer in zip(ids, inputs, answers, strict=True):
        rows, outputs = seen[rid]
        np.testing.assert_array_equal(rows, x)
        np.testing.assert_allclose(outputs[:, 0], answer.json()["outputs"][0]["data"], rtol=1e-6)


def test_batches_respect_the_row_limit_and_a_large_request_runs_alone(registry_with_model, tmp_path) -> None:
    uri, version = registry_with_model
    settings = settings_for(uri, [MODEL], tmp_path, batching={"max_batch_size": 4})
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        recorder = Recorder()
        gw.plane.observe(MODEL, recorder)
        rows = [[[float(i)] * 8] for i in range(12)] + [[[0.5] * 8] * 10]
        answers = concurrently(gw.url, [infer_body(r) for r in rows], [f"r{i}" for i in range(len(rows))],
                               queued=gw.plane.models[MODEL].batcher)
    assert all(a.status_code == 200 for a in answers)
    sizes = sorted(len(b.inputs) for b in recorder.batches)
    assert sizes[-1] == 10 and all(s <= 4 for s in sizes[:-1]) and sum(sizes) == 22


def test_with_batching_off_each_request_is_its_own_forward_pass(registry_with_model, tmp_path) -> None:
    uri, version = registry_with_model
    settings = settings_for(uri, [MODEL], tmp_path, batching={"enabled": False})
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        recorder = Recorder()
        gw.plane.observe(MODEL, recorder)
        answers = concurrently(gw.url, [infer_body([[0.1 * i] * 8]) for i in range(8)], [f"s{i}" for i in range(8)])
    assert all(a.status_code == 200 and a.headers["x-model-version"] == str(version) for a in answers)
    assert sorted(b.request_ids for b in recorder.batches) == sorted((f"s{i}",) for i in range(8))


def test_a_lone_sequential_client_never_waits_for_company(registry_with_model, tmp_path) -> None:
    """Observed: with the default policy (`max_delay_ms` 2 as an upper bound), 200 requests sent one
    after another each run as a batch of one, and the measured wait stays 0: nothing arrives while a
    forward runs, so nothing is worth waiting for (the old fixed delay cost every such request 2 ms)."""
    uri, version = registry_with_model
    with ThreadedGateway(settings_for(uri, [MODEL], tmp_path)) as gw:
        gw.wait_serving(MODEL, version)
        batcher = gw.plane.models[MODEL].batcher
        recorder = Recorder()
        gw.plane.observe(MODEL, recorder)
        for i in range(200):
            r = gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body([[0.01 * i] * 8]))
            assert r.status_code == 200
            assert batcher.wait.seconds() == 0.0
        wait = gw.status(MODEL)["batching"]["wait"]
    assert len(recorder.batches) == 200 and all(len(b.inputs) == 1 for b in recorder.batches)
    assert batcher.wait.arrival_rows_per_s == 0.0 and batcher.wait.fixed_s > 0
    assert wait["next_wait_us"] == 0.0 and wait["fixed_us"] > 0


def test_the_wait_is_bounded_by_the_fixed_cost_it_saves_and_by_max_delay() -> None:
    """Observed, on the estimator alone: forwards of 100 µs + 1 µs per row fit to those costs; with
    rows arriving during forwards at 20k/s it waits the fixed cost (100 µs); capped by `max_delay_ms`;
    with arrivals too rare to expect one row within that time (one per other forward), it does not wait."""
    wait = BatchWait(max_wait_s=0.002)
    for rows in [1, 8, 32, 64] * 50:
        seconds = 100e-6 + rows * 1e-6
        wait.observe(rows, seconds, rows_arrived_meanwhile=round(20_000 * seconds))
    assert abs(wait.fixed_s - 100e-6) < 5e-6 and abs(wait.per_row_s - 1e-6) < 1e-7
    assert abs(wait.seconds() - wait.fixed_s) < 1e-12
    capped, rare = BatchWait(max_wait_s=50e-6), BatchWait(max_wait_s=0.002)
    for rows in [1, 2] * 100:
        seconds = 100e-6 + rows * 1e-6
        capped.observe(rows, seconds, rows_arrived_meanwhile=round(40_000 * seconds))  # 2 expected in 50 µs
        rare.observe(rows, seconds, rows_arrived_meanwhile=1 if rows == 2 else 0)
    assert capped.seconds() == 50e-6
    assert 0 < rare.arrival_rows_per_s * rare.fixed_s < 1 and rare.seconds() == 0.0  # < 1 row expected
    never = BatchWait(max_wait_s=0.0)
    never.observe(1, 1e-4, 10)
    assert never.seconds() == 0.0
