"""Micro-batching through a real server: work conservation (requests that arrive while the device
is busy share the next batch; a lone client never waits for company), batch limits, batching off,
and the observer hook that drift counting and shadow mirroring build on (it sees every batch; its
failures reach no one). The device thread is held with a gate, not slowed by sleeps, so which
requests share a batch is certain."""

from __future__ import annotations

import json
import socket
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


def _forwards(gw: ThreadedGateway) -> dict[str, int]:
    return gw.status(MODEL)["batching"]["forwards"]


@pytest.mark.parametrize("inline_max_ms", [1000.0, 0.0])
def test_short_cpu_forwards_run_on_the_event_loop_once_measured(registry_with_model, tmp_path,
                                                                 inline_max_ms) -> None:
    """Observed: a sequential client's first forwards run on the device thread, to be measured; after
    `MEASURED_BEFORE_INLINE` of them every forward the fit predicts shorter than `inline_max_ms` runs
    on the event loop (a budget no forward of the tiny model reaches here, so which one is certain);
    with a budget of 0 none does. Answers are the same either way, and a newly promoted version is
    measured afresh before any of its forwards runs on the loop."""
    from inferloop.gateway.serving.batcher import MEASURED_BEFORE_INLINE

    uri, version = registry_with_model
    settings = settings_for(uri, [MODEL], tmp_path, batching={"inline_max_ms": inline_max_ms})
    rows = [[0.01 * i] * 8 for i in range(30)]
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        answers = [gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body([r])) for r in rows]
        first = _forwards(gw)
        with Registry.open(uri) as reg:
            v2 = register_tiny(reg, MODEL, seed=5)
            reg.promote(MODEL, v2, "production")
        gw.wait_serving(MODEL, v2)
        for r in rows:
            assert gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body([r])).status_code == 200
        second = _forwards(gw)
        together = gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body(rows[:1]))
    assert all(a.status_code == 200 for a in answers)
    if inline_max_ms:
        assert first == {"device_thread": MEASURED_BEFORE_INLINE, "inline": len(rows) - MEASURED_BEFORE_INLINE}
        assert second == {"device_thread": 2 * MEASURED_BEFORE_INLINE, "inline": 2 * (len(rows) - MEASURED_BEFORE_INLINE)}
    else:
        assert first == {"device_thread": len(rows), "inline": 0}
        assert second == {"device_thread": 2 * len(rows), "inline": 0}
    assert together.headers["x-model-version"] == str(v2)
    with Registry.open(uri) as reg:  # the loop's answers are the model's: compare with a local forward
        local = reg.load_runnable(MODEL, version).run([np.asarray(rows, dtype=np.float32)])[0]
    np.testing.assert_allclose([a.json()["outputs"][0]["data"][0] for a in answers], local[:, 0], rtol=1e-6)


def test_with_forwards_on_the_event_loop_requests_that_arrive_together_share_a_batch(
        registry_with_model, tmp_path) -> None:
    """Observed: with a sequential client's forwards running on the event loop, requests that arrive
    while the loop is busy (here: held) are read together and run as one batch, on the device thread
    (a batch of several requests is load, and the hand-off lets the next batch gather), so batches
    still grow with load. The requests are sent on open keep-alive connections while the loop is
    held, then it is let go."""
    uri, version = registry_with_model
    settings = settings_for(uri, [MODEL], tmp_path, batching={"inline_max_ms": 1000.0})
    n = 12
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        for _ in range(20):  # measured on the device thread first, then on the loop
            gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body([[0.1] * 8]))
        assert _forwards(gw)["inline"] > 0
        recorder = Recorder()
        gw.plane.observe(MODEL, recorder)
        port = int(gw.url.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
        try:
            for i, sock in enumerate(socks):  # a first request on each connection: it is open and idle
                sock.sendall(_raw_infer(f"warm-{i}", [[0.2] * 8]))
                _read_response(sock)
            before = _forwards(gw)
            recorder.batches.clear()
            with gw.loop_blocked():
                for i, sock in enumerate(socks):
                    sock.sendall(_raw_infer(f"together-{i}", [[0.01 * i] * 8]))
            answers = [_read_response(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        after = _forwards(gw)
    assert all(status == 200 for status, _ in answers)
    together = [b for b in recorder.batches if any(rid.startswith("together-") for rid in b.request_ids)]
    assert [len(b.request_ids) for b in together] == [n]  # one batch, all of them
    assert after["device_thread"] == before["device_thread"] + 1 and after["inline"] == before["inline"]


def _raw_infer(request_id: str, rows: list[list[float]]) -> bytes:
    body = json.dumps(infer_body(rows)).encode()
    return (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            f"x-request-id: {request_id}\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), body


def test_the_forward_time_prediction_behind_inline_forwards() -> None:
    """Observed, on the estimator alone: nothing measured predicts infinity (the device thread);
    measured at one batch size only, time is taken as proportional beyond it (an upper bound);
    with a spread of sizes, the fitted line; `reset` forgets the costs but not the arrival rate."""
    wait = BatchWait(max_wait_s=0.002)
    assert wait.predict(1) == float("inf")
    for _ in range(20):
        wait.observe(1, 30e-6, rows_arrived_meanwhile=1)
    assert abs(wait.predict(1) - 30e-6) < 1e-9 and abs(wait.predict(64) - 64 * 30e-6) < 1e-9
    for rows in [1, 8, 32, 64] * 50:
        wait.observe(rows, 30e-6 + rows * 2e-6, rows_arrived_meanwhile=rows)
    assert abs(wait.predict(100) - (30e-6 + 100 * 2e-6)) < 2e-6
    rate = wait.arrival_rows_per_s
    wait.reset()
    assert wait.predict(1) == float("inf") and wait.observations == 0 and wait.arrival_rows_per_s == rate


def test_run_here_sets_up_the_calling_thread_like_the_device_thread() -> None:
    """torch's thread count is per thread: a forward on the event loop must not run with torch's
    default (every core) when the gateway was told `--torch-threads 1`."""
    import torch

    from inferloop.gateway.serving.device import DeviceExecutor

    executor = DeviceExecutor("cpu", "infer", torch_threads=1)
    seen: list[int] = []
    try:
        def probe() -> None:
            seen.append(executor.run_here(torch.get_num_threads))

        t = threading.Thread(target=probe)
        t.start()
        t.join(30)
        assert executor.can_run_here
        held = threading.Event()
        busy = executor.submit(held.wait)
        assert not executor.can_run_here  # the device thread has work: forwards queue behind it
        held.set()
        busy.result(30)
        eventually(lambda: executor.can_run_here, 30, "the device thread to be idle again")
    finally:
        executor.shutdown()
    assert seen == [1]


def test_the_device_executor_hands_results_and_errors_back_and_shutdown_drops_what_is_queued() -> None:
    """Observed: `run` returns the function's result and raises its exception on the caller's loop,
    in order, on the one named device thread; `shutdown` lets the running job finish, cancels what is
    queued behind it (callers get CancelledError), and refuses new work."""
    import asyncio
    from concurrent.futures import CancelledError

    from inferloop.gateway.serving.device import DeviceExecutor

    executor = DeviceExecutor("cpu", "infer")

    def boom() -> None:
        raise ValueError("refused")

    async def calls() -> tuple[list[str], str]:
        names = await asyncio.gather(*(executor.run(lambda i=i: f"{i}:{threading.current_thread().name}")
                                       for i in range(5)))
        try:
            await executor.run(boom)
        except ValueError as exc:
            return names, str(exc)
        raise AssertionError("the exception did not reach the caller")

    names, error = asyncio.run(calls())
    assert names == [f"{i}:inferloop-infer-cpu" for i in range(5)] and error == "refused"
    gate, started = threading.Event(), threading.Event()
    running = executor.submit(lambda: (started.set(), gate.wait(30))[1])
    queued = executor.submit(lambda: "never")
    assert started.wait(30), "the first job did not start"
    stopper = threading.Thread(target=executor.shutdown)
    stopper.start()
    eventually(lambda: queued.done(), 30, "the queued job to be dropped")
    gate.set()
    stopper.join(30)
    assert running.result(30) is True
    with pytest.raises(CancelledError):
        queued.result(0)
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(lambda: None)
