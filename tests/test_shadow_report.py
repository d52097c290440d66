"""The shadow report's statistics match an offline computation with numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from inferloop.gateway.shadow.report import ShadowComparison, wilson_interval
from inferloop.policy import ShadowPolicy as ShadowRules


def _offline_psi(p: np.ndarray, s: np.ndarray) -> float:
    edges = np.unique(np.quantile(p, np.linspace(0, 1, 11)[1:-1]))
    cp = np.bincount(np.digitize(p, edges), minlength=len(edges) + 1).astype(float)
    cs = np.bincount(np.digitize(s, edges), minlength=len(edges) + 1).astype(float)
    a = (cs + 0.5) / (cs + 0.5).sum()
    e = (cp + 0.5) / (cp + 0.5).sum()
    return float(np.sum((a - e) * np.log(a / e)))


def test_regression_report_matches_offline() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 4))
    primary = x @ np.array([1.0, -2.0, 0.5, 0.0])
    shadow = x @ np.array([1.1, -1.9, 0.5, 0.1]) + 0.05
    lat_p, lat_s = rng.gamma(2, 0.001, 5000), rng.gamma(2, 0.0012, 5000)
    cmp = ShadowComparison("m", 1, 2, "regression")
    for i in range(0, 5000, 64):  # added in micro-batches, as the gateway does
        cmp.add(primary[i:i + 64, None], shadow[i:i + 64, None], lat_p[i:i + 64], lat_s[i:i + 64])
    r = cmp.report(ShadowRules(min_requests=1000, max_prediction_psi=0.5, max_p99_latency_ratio=2.0))
    d = np.abs(primary - shadow)
    assert r.compared == r.window == 5000
    assert r.abs_diff["p50"] == pytest.approx(np.quantile(d, 0.5))
    assert r.abs_diff["p99"] == pytest.approx(np.quantile(d, 0.99))
    ks = stats.ks_2samp(primary, shadow)
    assert r.ks_statistic == pytest.approx(ks.statistic) and r.ks_pvalue == pytest.approx(ks.pvalue)
    assert r.prediction_psi == pytest.approx(_offline_psi(primary, shadow), rel=1e-9)
    assert r.latency_ms["primary"].p99 == pytest.approx(np.percentile(lat_p * 1e3, 99))
    assert r.latency_ms["difference"].p50 == pytest.approx(np.percentile((lat_s - lat_p) * 1e3, 50))
    assert r.p99_latency_ratio == pytest.approx(np.percentile(lat_s, 99) / np.percentile(lat_p, 99))
    assert r.rules_met and r.agreement is None


def test_binary_agreement_confusion_and_interval() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(size=(3000, 1))
    s = np.clip(p + rng.normal(0, 0.1, size=(3000, 1)), 0, 1)
    cmp = ShadowComparison("m", 1, 2, "binary")
    cmp.add(p, s, 0.001, 0.001)
    r = cmp.report(ShadowRules(min_requests=100, min_agreement=0.99))
    lp, ls = (p[:, 0] >= 0.5).astype(int), (s[:, 0] >= 0.5).astype(int)
    agree = int((lp == ls).sum())
    assert r.agreement.rate == pytest.approx(agree / 3000)
    assert r.agreement.confusion == [[int(((lp == i) & (ls == j)).sum()) for j in (0, 1)] for i in (0, 1)]
    lo, hi = wilson_interval(agree, 3000)
    assert r.agreement.ci_low == lo and r.agreement.ci_high == hi and lo < agree / 3000 < hi
    assert not r.rules_met and r.failing == ["min_agreement"]


def test_min_requests_blocks_and_ring_buffer_is_bounded() -> None:
    cmp = ShadowComparison("m", 1, 2, "regression", capacity=100)
    v = np.ones((250, 1))
    cmp.add(v, v, 0.001, 0.001)
    r = cmp.report(ShadowRules(min_requests=300))
    assert (r.compared, r.window) == (250, 100)
    assert r.failing == ["min_requests"] and not r.rules_met
    cmp.add(v[:60], v[:60], 0.001, 0.001)
    assert cmp.report(ShadowRules(min_requests=300)).rules_met


def test_wilson_interval_known_value() -> None:
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-4) and hi == pytest.approx(0.9785, abs=1e-4)
