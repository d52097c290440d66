"""Faults inside one gateway, injected into a real `inferloop serve` child under client load: a
shadow that hangs, a prediction-log sink that cannot write, and SIGTERM while requests are queued.
Each test says what it observes; "failed" always means an answer other than 200."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from inferloop.registry import Registry

from .fault_harness import ROW, Load, ServeProcess, metric, running
from .gateway_harness import eventually
from .helpers import register_tiny

MODEL = "guarded"


def _expected(reg: Registry, version: int) -> float:
    with torch.inference_mode():
        return float(reg.load_model(MODEL, version)(torch.tensor([ROW]))[0, 0])


def test_a_hanging_shadow_changes_no_primary_response(tmp_path: Path) -> None:
    """Observed: with a shadow version too wide to answer within `--shadow-timeout` (3072×3072
    hidden layers, timeout 10 ms), every primary response is 200 with exactly v1's output; the
    shadow's timeouts are counted (`inferloop_shadow_errors_total{reason="timeout"}`) and, while a
    timed-out batch still holds the shadow thread, mirrored requests are dropped and counted
    (`inferloop_shadow_dropped_total{reason="busy"}`). A shadow that raises or returns NaN:
    test_shadow_traffic.py."""
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        v1 = register_tiny(reg, MODEL, seed=1)
        reg.promote(MODEL, v1, "production")
        reg.promote(MODEL, register_tiny(reg, MODEL, seed=2, hidden=(3072, 3072)), "shadow")
        expected = _expected(reg, v1)
    gw = ServeProcess(tmp_path, ["--registry", uri, "--model", MODEL, "--cache-dir", str(tmp_path / "c"),
                                 "--shadow-timeout", "0.01", "--shadow-budget", "1"])
    with running(gw):
        gw.wait_ready()
        eventually(lambda: gw.status(MODEL)["stages"]["shadow"]["serving_version"] == 2, 60, "shadow loaded")
        with Load(gw.url, MODEL, threads=3) as load:
            eventually(lambda: metric(gw.metrics(), "inferloop_shadow_dropped_total", model=MODEL, reason="busy") > 0
                       and metric(gw.metrics(), "inferloop_shadow_errors_total", model=MODEL, reason="timeout") > 0,
                       60, "shadow timeouts and busy drops")
            load.wait_for(100)
    failed = load.failed()
    assert not failed, failed[:5]
    outputs = np.array([a.outputs[0] for a in load.ok()])
    assert np.abs(outputs - expected).max() < 1e-5 and {a.version for a in load.ok()} == {v1}


@pytest.mark.parametrize("sink", ["path-under-a-file", "s3-missing-bucket"])
def test_a_failing_log_sink_drops_and_counts_and_serving_goes_on(tmp_path: Path, sink: str, request) -> None:
    """Observed: with the prediction log pointed where nothing can be written — a directory under a
    regular file (ENOTDIR; a full disk fails the same write call) or an S3 bucket that does not
    exist — every prediction is answered 200, every record is dropped and counted
    (`inferloop_prediction_log_dropped_total` = requests answered: none kept waiting in memory), and
    the failure is logged once, not per flush. Buffer bound under a stuck sink:
    test_prediction_log.py."""
    if sink == "path-under-a-file":
        (tmp_path / "a-file").write_text("not a directory")
        target = str(tmp_path / "a-file" / "predictions")
    else:
        request.getfixturevalue("moto_server")  # sets AWS_ENDPOINT_URL for the child
        target = "s3://no-such-bucket-for-logs/predictions"
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        reg.promote(MODEL, register_tiny(reg, MODEL, seed=1), "production")
    gw = ServeProcess(tmp_path, ["--registry", uri, "--model", MODEL, "--cache-dir", str(tmp_path / "c"),
                                 "--prediction-log", target, "--log-sample-rate", "1"])
    with running(gw):
        gw.wait_ready()
        with Load(gw.url, MODEL, threads=3) as load:
            load.wait_for(300)
        answered = len(load.ok())
        dropped = eventually(lambda: (n := metric(gw.metrics(), "inferloop_prediction_log_dropped_total")) >= answered
                             and n, 30, "every record dropped and counted")
    failed = load.failed()
    assert not failed, failed[:5]
    assert dropped == answered
    assert gw.output().count("prediction log sink failed") == 1


def test_sigterm_under_load_finishes_queued_requests_and_flushes_every_record(tmp_path: Path) -> None:
    """Observed: SIGTERM while clients keep sending and requests wait in the batch queue (1 s batch
    delay): requests sent before the signal are answered 200 after it, no request gets an HTTP error
    (after the signal clients only see refused or closed connections), the process exits 0, and the
    prediction log holds exactly one record per 200 answer (0 records lost)."""
    uri = f"file://{tmp_path / 'registry'}"
    logdir = tmp_path / "predictions"
    with Registry.open(uri) as reg:
        reg.promote(MODEL, register_tiny(reg, MODEL, seed=1), "production")
    gw = ServeProcess(tmp_path, ["--registry", uri, "--model", MODEL, "--cache-dir", str(tmp_path / "c"),
                                 "--prediction-log", str(logdir), "--log-sample-rate", "1",
                                 "--max-batch-delay-ms", "1000"])
    queued = 'inferloop_batch_queue_rows'
    with running(gw):
        gw.wait_ready()
        with Load(gw.url, MODEL, threads=4) as load:
            load.wait_for(8)
            eventually(lambda: metric(gw.metrics(), queued, model=MODEL, role="primary") >= 3, 30, "queued requests")
            signalled = time.monotonic()
            gw.signal(signal.SIGTERM)
            assert gw.proc.wait(60) == 0, gw.output()
    records = [json.loads(line) for f in logdir.rglob("*.jsonl") for line in f.read_text().splitlines()]
    ok = load.ok()
    # requests waiting in the batch window at the signal were answered after it (the clients resend at
    # once after each answer, so some always wait there, even if a batch ran just before the signal)
    assert any(a.sent < signalled < a.received for a in ok)
    assert all(a.status == 0 for a in load.failed()), [a for a in load.failed() if a.status][:5]
    assert sorted(r["request_id"] for r in records) == sorted(a.request_id for a in ok)
