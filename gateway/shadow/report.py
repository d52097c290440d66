"""Rolling comparison of primary and shadow predictions for one (primary, shadow) version pair.

Paired samples live in fixed-size ring buffers (bounded memory); the report is computed on demand:
agreement with a Wilson interval and a confusion matrix (classification), quantiles of |primary −
shadow| (regression), PSI and two-sample KS between the two prediction distributions, and latency
percentiles of each model and of the paired difference. The policy's `shadow:` rules turn it into a verdict.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec
import numpy as np
from scipy import stats

from inferloop.gateway.drift.monitor import psi
from inferloop.registry.reference import quantile_edges

if TYPE_CHECKING:
    from inferloop.policy import ShadowPolicy

DEFAULT_CAPACITY = 20_000


class Percentiles(msgspec.Struct, frozen=True):
    p50: float
    p95: float
    p99: float


class Agreement(msgspec.Struct, frozen=True):
    rate: float
    ci_low: float
    ci_high: float
    confusion: list[list[int]]  # rows: primary label, columns: shadow label
    labels: list[str]


class RuleResult(msgspec.Struct, frozen=True):
    rule: str
    value: float | None
    limit: float
    passed: bool


class ShadowReport(msgspec.Struct, frozen=True):
    model: str
    primary_version: int | None
    shadow_version: int | None
    output_kind: str
    compared: int  # pairs seen for this version pair (all time)
    window: int  # pairs in the rolling window the statistics use
    prediction_psi: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    abs_diff: dict[str, float] | None
    agreement: Agreement | None
    latency_ms: dict[str, Percentiles]
    p99_latency_ratio: float | None
    rules: list[RuleResult]
    rules_met: bool
    failing: list[str]
    auto_promote: bool


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def prediction_psi(primary: np.ndarray, shadow: np.ndarray, bins: int = 10) -> float:
    """PSI of the shadow's predictions against the primary's, on quantile bins of the primary's."""
    edges = np.asarray(quantile_edges(primary, bins))
    counts_p = np.bincount(np.searchsorted(edges, primary, side="right"), minlength=len(edges) + 1)
    counts_s = np.bincount(np.searchsorted(edges, shadow, side="right"), minlength=len(edges) + 1)
    return psi(counts_s, counts_p / max(counts_p.sum(), 1), int(counts_p.sum()))


def labels_of(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """Class labels from model outputs: binary outputs are probabilities of class 1."""
    if output_kind == "binary":
        return (outputs[:, 0] >= 0.5).astype(np.int64)
    if outputs.shape[1] == 1:  # one column under a multiclass task: the labels themselves (e.g. ONNX `label`)
        column: np.ndarray = np.rint(outputs[:, 0]).astype(np.int64)
        return column
    labels: np.ndarray = np.argmax(outputs, axis=1).astype(np.int64)
    return labels


def _pct(values: np.ndarray) -> Percentiles:
    if values.size == 0:
        return Percentiles(0.0, 0.0, 0.0)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return Percentiles(float(p50), float(p95), float(p99))


class ShadowComparison:
    """Paired outputs of one version pair, in ring buffers. Not thread-safe: event loop only."""

    def __init__(self, model: str, primary_version: int | None, shadow_version: int | None, output_kind: str,
                 outputs: int = 1, capacity: int = DEFAULT_CAPACITY) -> None:
        self.model = model
        self.primary_version = primary_version
        self.shadow_version = shadow_version
        self.output_kind = output_kind
        self.capacity = capacity
        self.primary = np.zeros((capacity, outputs), dtype=np.float64)
        self.shadow = np.zeros((capacity, outputs), dtype=np.float64)
        self.latency = np.zeros((capacity, 2), dtype=np.float64)  # seconds: primary, shadow
        self.compared = 0

    def add(self, primary: np.ndarray, shadow: np.ndarray, primary_latency: np.ndarray | float,
            shadow_latency: np.ndarray | float) -> None:
        """Add n pairs (arrays of shape (n, outputs)); latencies per pair or one per batch."""
        n = primary.shape[0]
        if n == 0:
            return
        if n > self.capacity:
            primary, shadow = primary[-self.capacity:], shadow[-self.capacity:]
            primary_latency = np.broadcast_to(primary_latency, (n,))[-self.capacity:]
            shadow_latency = np.broadcast_to(shadow_latency, (n,))[-self.capacity:]
            self.compared += n - self.capacity
            n = self.capacity
        idx = (self.compared + np.arange(n)) % self.capacity
        self.primary[idx] = primary.reshape(n, -1)
        self.shadow[idx] = shadow.reshape(n, -1)
        self.latency[idx, 0] = primary_latency
        self.latency[idx, 1] = shadow_latency
        self.compared += n

    def report(self, rules: ShadowPolicy) -> ShadowReport:
        n = min(self.compared, self.capacity)
        p, s, lat = self.primary[:n], self.shadow[:n], self.latency[:n] * 1e3
        psi_value = ks = ks_p = None
        abs_diff = agreement = None
        if n >= 2:
            psi_value = prediction_psi(p[:, 0], s[:, 0])
            res = stats.ks_2samp(p[:, 0], s[:, 0])
            ks, ks_p = float(res.statistic), float(res.pvalue)
        if n and self.output_kind == "regression":
            d = np.abs(p - s)[:, 0]
            q = np.quantile(d, [0.5, 0.9, 0.99])
            abs_diff = {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(d.max()),
                        "mean": float(d.mean())}
        elif n:
            lp, ls = labels_of(p, self.output_kind), labels_of(s, self.output_kind)
            k = 2 if self.output_kind == "binary" else p.shape[1]
            confusion = np.zeros((k, k), dtype=np.int64)
            np.add.at(confusion, (lp, ls), 1)
            agree = int(np.trace(confusion))
            lo, hi = wilson_interval(agree, n)
            agreement = Agreement(agree / n, lo, hi, confusion.tolist(), [str(i) for i in range(k)])
        latency = {"primary": _pct(lat[:, 0]), "shadow": _pct(lat[:, 1]), "difference": _pct(lat[:, 1] - lat[:, 0])}
        ratio = latency["shadow"].p99 / latency["primary"].p99 if n and latency["primary"].p99 > 0 else None
        results = [
            RuleResult("min_requests", float(self.compared), float(rules.min_requests),
                       self.compared >= rules.min_requests),
            RuleResult("max_prediction_psi", psi_value, rules.max_prediction_psi,
                       psi_value is not None and psi_value <= rules.max_prediction_psi),
            RuleResult("max_p99_latency_ratio", ratio, rules.max_p99_latency_ratio,
                       ratio is not None and ratio <= rules.max_p99_latency_ratio),
        ]
        if self.output_kind != "regression":  # agreement of labels means nothing for a regression
            rate = agreement.rate if agreement else None
            results.insert(2, RuleResult("min_agreement", rate, rules.min_agreement,
                                         rate is not None and rate >= rules.min_agreement))
        failing = [r.rule for r in results if not r.passed]
        return ShadowReport(
            model=self.model, primary_version=self.primary_version, shadow_version=self.shadow_version,
            output_kind=self.output_kind, compared=self.compared, window=n, prediction_psi=psi_value,
            ks_statistic=ks, ks_pvalue=ks_p, abs_diff=abs_diff, agreement=agreement, latency_ms=latency,
            p99_latency_ratio=ratio, rules=results, rules_met=not failing, failing=failing,
            auto_promote=rules.auto_promote,
        )
