"""Prometheus metrics of one gateway app, on its own `CollectorRegistry` (names from DESIGN.md).

Labels stay bounded: `model` is one of the configured models (or "_unknown"), `role` is primary or
shadow, `code` an HTTP status, `stage` one of three, `version` only for the versions loaded now.
Per-request updates go through cached label children, so the hot path does one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_MODEL = "_unknown"


class LiveStateCollector(Collector):
    """Gauges read at scrape time (slot states, queue depths), so serving never pays for them."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, dict[str, str], float]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        helps = {
            "inferloop_model_slots": "Loaded model slots by lifecycle state",
            "inferloop_batch_queue_rows": "Rows waiting in a model's micro-batch queue",
        }
        for name, labels, value in self._read():
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, helps.get(name, name), labels=list(labels))
            family.add_metric(list(labels.values()), value)
        return list(families.values())


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("inferloop_requests", "Inference requests answered", ["model", "role", "code"],
                                registry=r)
        self.request_duration = Histogram("inferloop_request_duration_seconds",
                                          "Time from request received to response ready", ["model"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.inference_duration = Histogram("inferloop_inference_duration_seconds", "Forward pass time per batch",
                                            ["model", "role"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("inferloop_batch_size", "Rows per forward pass", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.model_info = Gauge("inferloop_model_info", "The version serving each stage (value 1)",
                                ["model", "stage", "version"], registry=r)
        self.swaps = Counter("inferloop_model_swaps", "Versions switched in without a restart", ["model", "stage"],
                             registry=r)
        self.load_failures = Counter("inferloop_model_load_failures", "Versions that failed to fetch, load or warm up",
                                     ["model", "stage", "phase"], registry=r)
        self.poll_errors = Counter("inferloop_registry_poll_errors", "Stage pointer polls that failed",
                                   ["model", "stage"], registry=r)
        self.observer_errors = Counter("inferloop_batch_observer_errors", "Batch observers that raised",
                                       ["model", "observer"], registry=r)
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._duration_children: dict[str, Any] = {}

    def add_live_state(self, read: Callable[[], Iterable[tuple[str, dict[str, str], float]]]) -> None:
        self.registry.register(LiveStateCollector(read))

    def count_request(self, model: str, role: str, code: int, seconds: float | None) -> None:
        key = (model, role, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(model, role, str(code))
        child.inc()
        if seconds is not None:
            hist = self._duration_children.get(model)
            if hist is None:
                hist = self._duration_children[model] = self.request_duration.labels(model)
            hist.observe(seconds)

    def serving(self, model: str, stage: str, old_version: int | None, new_version: int | None) -> None:
        if old_version is not None:
            try:
                self.model_info.remove(model, stage, str(old_version))
            except KeyError:
                pass
        if new_version is not None:
            self.model_info.labels(model, stage, str(new_version)).set(1)
