"""Prometheus metrics of one gateway app, on its own `CollectorRegistry` (names from DESIGN.md).

Labels stay bounded: `model` is one of the configured models (or "_unknown"), `role` is primary or
shadow, `code` an HTTP status, `stage` one of three, `version` only for the versions loaded now.

The two per-request metrics (`inferloop_requests_total`, `inferloop_request_duration_seconds`) are
kept by `RequestMetrics`: a request costs a dict update and a list append, and durations are
folded into histogram buckets with numpy at scrape time (or every few thousand requests). With
prometheus_client's own Counter + Histogram that was ~4 µs of a ~45 µs request. Per-batch and
per-swap metrics use prometheus_client directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_MODEL = "_unknown"


class LiveStateCollector(Collector):
    """Gauges read at scrape time (slot states, queue depths), so serving never pays for them."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, dict[str, str], float]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        helps = {
            "inferloop_model_slots": "Loaded model slots by lifecycle state",
            "inferloop_batch_queue_rows": "Rows waiting in a model's micro-batch queue",
            "inferloop_feature_bin_total": "Live inputs counted in each reference bin (mergeable across replicas)",
            "inferloop_feature_reference_fraction": "Smoothed reference fraction of each bin (for the PSI rule)",
        }
        for name, labels, value in self._read():
            family = families.get(name)
            if family is None:
                help_ = helps.get(name, name)
                # names ending in _total are counters (cumulative, never reset while a reference lives)
                family = families[name] = (CounterMetricFamily(name[:-6], help_, labels=list(labels))
                                           if name.endswith("_total") else
                                           GaugeMetricFamily(name, help_, labels=list(labels)))
            family.add_metric(list(labels.values()), value)
        return list(families.values())


class _Durations:
    """One histogram's cumulative state plus observations not folded in yet."""

    FOLD_AT = 4096

    def __init__(self, bounds: np.ndarray) -> None:
        self.bounds = bounds
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # last: above every bound (+Inf only)
        self.total = 0.0
        self.pending: list[float] = []

    def fold(self) -> None:
        pending, self.pending = self.pending, []
        if pending:
            values = np.asarray(pending)
            # bucket i holds v <= bounds[i] (Prometheus "le"); searchsorted(side="left") finds that i
            self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
            self.total += float(values.sum())


class _RequestCount:
    """prometheus_client-style child (`.inc(n)`) for roles counted outside the request path (shadow)."""

    def __init__(self, counts: dict[tuple[str, str, str], float], key: tuple[str, str, str]) -> None:
        self._counts = counts
        self._key = key

    def inc(self, amount: float = 1.0) -> None:
        self._counts[self._key] = self._counts.get(self._key, 0.0) + amount


class RequestMetrics(Collector):
    """`inferloop_requests_total{model,role,code}` and `inferloop_request_duration_seconds{model}`, and
    `inferloop_grpc_requests_total{model,code}`: the gRPC share, by gRPC status (a separate family, so
    the request counter's labels stay what rules and dashboards select on)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts: dict[tuple[str, str, str], float] = {}
        self._durations: dict[str, _Durations] = {}
        self._codes: dict[int, str] = {}
        self._grpc: dict[tuple[str, str], float] = {}  # (model, gRPC status name): the protocol split

    def observe(self, model: str, role: str, code: int, seconds: float | None) -> None:
        text = self._codes.get(code)
        if text is None:
            text = self._codes[code] = str(code)
        key = (model, role, text)
        self._counts[key] = self._counts.get(key, 0.0) + 1.0
        if seconds is not None:
            durations = self._durations.get(model)
            if durations is None:
                durations = self._durations[model] = _Durations(self._bounds)
            durations.pending.append(seconds)
            if len(durations.pending) >= _Durations.FOLD_AT:
                durations.fold()

    def observe_grpc(self, model: str, status: str) -> None:
        key = (model, status)
        self._grpc[key] = self._grpc.get(key, 0.0) + 1.0

    def labels(self, model: str, role: str, code: str) -> _RequestCount:
        return _RequestCount(self._counts, (model, role, str(code)))

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        counter = CounterMetricFamily("inferloop_requests", "Inference requests answered",
                                      labels=["model", "role", "code"])
        for labels, value in sorted(self._counts.items()):
            counter.add_metric(list(labels), value)
        histogram = HistogramMetricFamily("inferloop_request_duration_seconds",
                                          "Time from request received to response ready", labels=["model"])
        edges = [*(repr(float(b)) for b in self._bounds), "+Inf"]
        for model, durations in sorted(self._durations.items()):
            durations.fold()
            cumulative = np.cumsum(durations.counts)
            histogram.add_metric([model], list(zip(edges, cumulative.tolist(), strict=True)), durations.total)
        grpc = CounterMetricFamily("inferloop_grpc_requests", "Inference requests answered over gRPC (also counted "
                                   "in inferloop_requests_total, under the HTTP code REST would give)",
                                   labels=["model", "code"])
        for grpc_labels, value in sorted(self._grpc.items()):
            grpc.add_metric(list(grpc_labels), value)
        return [counter, histogram, grpc]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = RequestMetrics()
        r.register(self.requests)
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
        # every request to the registry's store (get_if_changed = a poll), so polling's cost is visible
        self.registry_requests = Counter("inferloop_registry_requests", "Requests to the registry store",
                                         ["op"], registry=r)
        self.observer_errors = Counter("inferloop_batch_observer_errors", "Batch observers that raised",
                                       ["model", "observer"], registry=r)
        # shadow traffic and drift (inferloop.gateway.shadow.mirror, inferloop.gateway.drift.watch)
        self.shadow_dropped = Counter("inferloop_shadow_dropped", "Mirrored requests dropped before the shadow ran",
                                      ["model", "reason"], registry=r)
        self.shadow_errors = Counter("inferloop_shadow_errors", "Mirrored requests the shadow failed on",
                                     ["model", "reason"], registry=r)
        self.shadow_prediction_psi = Gauge("inferloop_shadow_prediction_psi",
                                           "PSI between shadow and primary prediction distributions", ["model"],
                                           registry=r)
        self.shadow_agreement = Gauge("inferloop_shadow_agreement",
                                      "Share of mirrored rows where shadow and primary labels agree", ["model"],
                                      registry=r)
        self.shadow_compared = Gauge("inferloop_shadow_compared", "Paired predictions in the current shadow report",
                                     ["model"], registry=r)
        self.shadow_promotions = Counter("inferloop_shadow_promotions", "Shadow versions promoted on evidence",
                                         ["model"], registry=r)
        self.feature_psi = Gauge("inferloop_feature_psi", "PSI of the last closed window, per feature (this replica)",
                                 ["model", "feature"], registry=r)
        self.feature_psi_critical = Gauge("inferloop_feature_psi_critical",
                                          "PSI an undrifted feature exceeds with probability false_alarm_rate / "
                                          "features, for the last closed window's rows (this replica)",
                                          ["model", "feature"], registry=r)
        self.drift_triggers = Counter("inferloop_drift_triggers", "Drift trips that requested a retrain", ["model"],
                                      registry=r)
        self.prediction_log_dropped = Counter("inferloop_prediction_log_dropped",
                                              "Prediction records dropped (buffer full or sink failing)", registry=r)
        # client connections (inferloop.gateway.transport.http_guard): the count is read at scrape time
        self.http_connections = Gauge("inferloop_http_connections", "Open client connections", ["listener"],
                                      registry=r)
        self.http_connections_refused = Counter("inferloop_http_connections_refused",
                                                "New connections refused (503) at the connection limit, none idle",
                                                ["listener"], registry=r)
        self.http_connections_closed = Counter("inferloop_http_connections_closed",
                                               "Connections the gateway closed: header_timeout, idle_timeout, "
                                               "send_timeout, evicted (room for a new one), bad_request", ["reason"],
                                               registry=r)

    def add_live_state(self, read: Callable[[], Iterable[tuple[str, dict[str, str], float]]]) -> None:
        self.registry.register(LiveStateCollector(read))

    def count_request(self, model: str, role: str, code: int, seconds: float | None) -> None:
        self.requests.observe(model, role, code, seconds)

    def count_grpc(self, model: str, status: str) -> None:
        """One gRPC inference answered with `status` (OK, INVALID_ARGUMENT...), besides `count_request`."""
        self.requests.observe_grpc(model, status)

    def serving(self, model: str, stage: str, old_version: int | None, new_version: int | None) -> None:
        if old_version is not None:
            try:
                self.model_info.remove(model, stage, str(old_version))
            except KeyError:
                pass
        if new_version is not None:
            self.model_info.labels(model, stage, str(new_version)).set(1)
