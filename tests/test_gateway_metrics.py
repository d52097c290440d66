"""The gateway's own request metrics expose exactly what prometheus_client would for the same data."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from inferloop.gateway.metrics import LATENCY_BUCKETS, RequestMetrics, _Durations


def _samples(text: bytes, prefix: str) -> list[str]:
    return sorted(line for line in text.decode().splitlines()
                  if line.startswith(prefix) and "_created" not in line)


def test_request_metrics_match_prometheus_client_exactly() -> None:
    rng = np.random.default_rng(0)
    values = [*rng.exponential(0.01, size=_Durations.FOLD_AT + 500).tolist(), *LATENCY_BUCKETS, 0.0, 99.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = RequestMetrics()
    ours.register(metrics)
    counter = Counter("inferloop_requests", "x", ["model", "role", "code"], registry=theirs)
    histogram = Histogram("inferloop_request_duration_seconds", "x", ["model"], buckets=LATENCY_BUCKETS,
                          registry=theirs)
    for i, v in enumerate(values):  # bucket edges themselves included: "le" means <=
        model = "a" if i % 3 else "b"
        metrics.observe(model, "primary", 200 if i % 7 else 400, v)
        counter.labels(model, "primary", "200" if i % 7 else "400").inc()
        histogram.labels(model).observe(v)
    metrics.labels("a", "shadow", "200").inc(5)
    counter.labels("a", "shadow", "200").inc(5)
    metrics.observe("a", "primary", 503, None)  # counted, not timed
    counter.labels("a", "primary", "503").inc()
    mine, reference = generate_latest(ours), generate_latest(theirs)
    assert _samples(mine, "inferloop_requests_total") == _samples(reference, "inferloop_requests_total")
    ours_h = _samples(mine, "inferloop_request_duration_seconds")
    ref_h = _samples(reference, "inferloop_request_duration_seconds")
    assert [s.rsplit(" ", 1)[0] for s in ours_h] == [s.rsplit(" ", 1)[0] for s in ref_h]
    for a, b in zip(ours_h, ref_h, strict=True):  # counts exact; sums equal up to summation order
        assert abs(float(a.rsplit(" ", 1)[1]) - float(b.rsplit(" ", 1)[1])) < 1e-9, (a, b)
