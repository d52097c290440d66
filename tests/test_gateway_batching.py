"""Micro-batching through a real server: batch limits, batching off, and the observer hook that
drift counting and shadow mirroring build on (it sees every batch; its failures reach no one)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from inferloop.gateway.serving.batcher import CompletedBatch
from inferloop.registry import Registry

from tests.gateway_harness import ThreadedGateway, infer_body, settings_for
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


def concurrently(url: str, bodies: list[dict], ids: list[str]) -> list[httpx.Response]:
    answers: list[httpx.Response | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            barrier.wait()
            answers[i] = c.post(f"/v2/models/{MODEL}/infer", json=bodies[i], headers={"x-request-id": ids[i]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


def test_observers_see_every_batch_and_their_errors_never_reach_a_response(registry_with_model, tmp_path) -> None:
    uri, version = registry_with_model
    settings = settings_for(uri, [MODEL], tmp_path, batching={"max_delay_ms": 100.0, "max_batch_size": 64})
    rng = np.random.default_rng(0)
    sizes = [1, 3, 1, 2, 1, 1, 5, 1, 1, 1, 2, 1]
    inputs = [rng.normal(size=(n, 8)).astype(np.float32) for n in sizes]
    ids = [f"req-{i}" for i in range(len(sizes))]
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        recorder = Recorder()
        gw.plane.observe(MODEL, Exploding())  # first in line: must not stop the recorder after it
        remove = gw.plane.observe(MODEL, recorder)
        answers = concurrently(gw.url, [infer_body(x.tolist()) for x in inputs], ids)
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
    assert len(recorder.batches) < len(sizes)  # concurrent requests shared batches
    for rid, x, answer in zip(ids, inputs, answers, strict=True):
        rows, outputs = seen[rid]
        np.testing.assert_array_equal(rows, x)
        np.testing.assert_allclose(outputs[:, 0], answer.json()["outputs"][0]["data"], rtol=1e-6)


def test_batches_respect_the_row_limit_and_a_large_request_runs_alone(registry_with_model, tmp_path) -> None:
    uri, version = registry_with_model
    settings = settings_for(uri, [MODEL], tmp_path, batching={"max_delay_ms": 50.0, "max_batch_size": 4})
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        recorder = Recorder()
        gw.plane.observe(MODEL, recorder)
        rows = [[[float(i)] * 8] for i in range(12)] + [[[0.5] * 8] * 10]
        answers = concurrently(gw.url, [infer_body(r) for r in rows], [f"r{i}" for i in range(len(rows))])
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
