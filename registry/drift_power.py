"""How much PSI noise a reference and a window carry: the critical value of the drift decision.

PSI of an undrifted window is not zero: both the live window (n rows) and the reference (M rows) are
samples, so n·PSI is roughly χ²(bins − 1)·(1 + n/M). A fixed threshold therefore trips on noise when
n or M is small (a 455-row reference with 114-row windows of 30 features trips on nearly every
window at 0.10). The gateway trips a feature only when its PSI exceeds both the policy threshold
(an effect-size floor) and

    critical = (infl/n + 1/M) · χ²₁₋α/F(bins − 1) + empty-slot bias,    infl = 1 + 1.6·bins/n

the PSI one undrifted feature exceeds with probability α/F; Bonferroni over the F features tested
keeps the chance that any feature of an undrifted window trips at or below α (the policy's
`false_alarm_rate`). `bins` are the reference slots with a non-zero fraction (the χ² degrees of
freedom are bins − 1); `infl` corrects the χ² approximation for small windows; each slot that is
empty in the reference (the missing-value slot of a NaN-free feature, a bin emptied by ties) adds a
fixed PSI when it is empty live too, because the +0.5 smoothing gives it different fractions on the
two sides. The constants were fitted and checked by Monte Carlo against this project's own binning
and PSI (`python -m loadtests.bench_drift_calibration`, BENCHMARKS.md).

This module lives in the registry, which warns at registration when a reference is too small; the
gateway imports it for the decision. numpy and scipy only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache

import msgspec
import numpy as np

from inferloop.registry.manifest import BinnedReference, ReferenceStats

log = logging.getLogger("inferloop.registry")

SMOOTHING = 0.5  # added to every count on both sides of the PSI (the gateway's psi() uses this one)
SMALL_WINDOW = 1.6  # window-side inflation 1 + c·bins/n of the χ² scale, fitted by Monte Carlo
# The monitor policy's defaults (inferloop.policy.PsiMethod / MonitorPolicy), used to judge a
# reference at registration, where no policy is known; tests/test_drift_calibration.py pins them.
DEFAULT_THRESHOLD = 0.10
DEFAULT_WINDOW = 1000
DEFAULT_FALSE_ALARM_RATE = 0.01
DETECTION_POWER = 0.8  # the detection probability min_detectable_psi reports


def reference_slots(fractions: Sequence[float]) -> tuple[int, int]:
    """(bins, empty) of one feature from its stored reference fractions (len(edges) + 2 slots):
    slots the reference filled, and slots it left empty."""
    f = np.asarray(fractions, dtype=np.float64)
    bins = int(np.count_nonzero(f > 0))
    return bins, int(f.size - bins)


@lru_cache(maxsize=4096)
def chi2_quantile(bins: int, features: int, alpha: float) -> float:
    """χ² quantile at 1 − α/F with bins − 1 degrees of freedom (0 for a single bin); cached, since a
    monitor asks for the same few (bins, F, α) on every window."""
    if bins <= 1:
        return 0.0
    from scipy import stats  # lazily: scipy costs ~1 s at import, and every registry import would pay it

    return float(stats.chi2.isf(alpha / max(features, 1), bins - 1))


def _bias(n: np.ndarray, m: np.ndarray, bins: np.ndarray, empty: np.ndarray) -> np.ndarray:
    k = bins + empty
    a = SMOOTHING / (n + SMOOTHING * k)
    e = SMOOTHING / (m + SMOOTHING * k)
    out: np.ndarray = empty * (a - e) * np.log(a / e)
    return out


def _scale(n: np.ndarray, m: np.ndarray, bins: np.ndarray) -> np.ndarray:
    out: np.ndarray = (1.0 + SMALL_WINDOW * bins / n) / n + 1.0 / m
    return out


def _critical(n: np.ndarray, m: np.ndarray, bins: np.ndarray, empty: np.ndarray, q: np.ndarray) -> np.ndarray:
    # bins <= 1 (a constant feature in the reference): q is 0, only the bias is left
    out: np.ndarray = np.where(bins > 1, _scale(n, m, bins) * q, 0.0) + _bias(n, m, bins, empty)
    return out


def _arrays(n: int, m: int, bins: int, empty: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """0-d float arrays for the vectorised helpers; sizes below 1 count as 1."""
    return (np.asarray(max(int(n), 1), dtype=np.float64), np.asarray(max(int(m), 1), dtype=np.float64),
            np.asarray(bins, dtype=np.float64), np.asarray(empty, dtype=np.float64))


def empty_slot_bias(n: int, m: int, bins: int, empty: int = 1) -> float:
    """PSI that `empty` slots add when they are empty on both sides: the smoothing gives them
    0.5/(n + K/2) live and 0.5/(M + K/2) in the reference, K = bins + empty."""
    return float(_bias(*_arrays(n, m, bins, empty)))


def critical_psi(n: int, m: int, bins: int, *, empty: int = 1, features: int = 1,
                 alpha: float = DEFAULT_FALSE_ALARM_RATE) -> float:
    """PSI that one undrifted feature exceeds with probability <= alpha/features, for a window of
    `n` rows against a reference of `m` rows."""
    nn, mm, b, e = _arrays(n, m, bins, empty)
    return float(_critical(nn, mm, b, e, np.asarray(chi2_quantile(int(bins), features, alpha))))


def noise_floor(n: int, m: int, bins: int, empty: int = 1) -> float:
    """Expected PSI of an undrifted window: (bins − 1)(1/n + 1/M) plus the empty-slot bias."""
    nn, mm, b, e = _arrays(n, m, bins, empty)
    return float(max(bins - 1, 0) * (1.0 / nn + 1.0 / mm) + _bias(nn, mm, b, e))


def min_detectable_psi(n: int, m: int, bins: int, *, empty: int = 1, features: int = 1,
                       alpha: float = DEFAULT_FALSE_ALARM_RATE, threshold: float = DEFAULT_THRESHOLD,
                       power: float = DETECTION_POWER) -> float:
    """True (population) PSI of one feature that one window detects with probability `power` under
    the rule PSI > max(threshold, critical): noncentral χ² with noncentrality PSI / scale, damped by
    the live-side smoothing (which shrinks a − e by n / (n + K/2))."""
    if bins <= 1:
        return 0.0
    nn, mm, b, e = _arrays(n, m, bins, empty)
    s = float(_scale(nn, mm, b))
    level = max(threshold, critical_psi(n, m, bins, empty=empty, features=features, alpha=alpha))
    cut = (level - float(_bias(nn, mm, b, e))) / s
    from scipy import optimize, stats  # lazily, as in chi2_quantile

    def short(lam: float) -> float:
        return float(stats.ncx2.sf(cut, bins - 1, lam)) - power

    if short(1e-9) >= 0:
        return 0.0
    hi = 1e3
    while short(hi) < 0:
        hi *= 10
    lam = float(optimize.brentq(short, 1e-9, hi))
    shrink = (float(nn) / (float(nn) + SMOOTHING * (bins + empty))) ** 2
    return s * lam / shrink


class Calibration:
    """Per-feature critical values of one reference, vectorised over its features: what the
    gateway's monitor asks once per closed window (with the window's actual row count)."""

    def __init__(self, features: Sequence[BinnedReference], alpha: float, *, tested: int | None = None) -> None:
        """`tested`: the number of features the Bonferroni correction divides alpha by, when the
        features given are several models' at once (default: all of them, one model)."""
        slots = [reference_slots(f.fractions) for f in features]
        self.alpha = alpha
        self.features = len(features) if tested is None else tested
        self.bins = np.array([b for b, _ in slots], dtype=np.float64)
        self.empty = np.array([e for _, e in slots], dtype=np.float64)
        self.m = np.array([max(int(f.count), 1) for f in features], dtype=np.float64)
        self.q = np.array([chi2_quantile(b, self.features, alpha) for b, _ in slots], dtype=np.float64)

    def critical(self, n: int) -> np.ndarray:
        """Critical PSI per feature for a window of `n` rows."""
        return _critical(np.asarray(max(n, 1), dtype=np.float64), self.m, self.bins, self.empty, self.q)

    def noise_floor(self, n: int) -> np.ndarray:
        """Expected undrifted PSI per feature for a window of `n` rows."""
        nn = np.asarray(max(n, 1), dtype=np.float64)
        out: np.ndarray = np.maximum(self.bins - 1, 0) * (1.0 / nn + 1.0 / self.m) + _bias(nn, self.m, self.bins,
                                                                                           self.empty)
        return out


class PowerCheck(msgspec.Struct, frozen=True):
    """A reference (with a window size) too small for the threshold to be the level that applies."""

    feature: str  # the feature with the highest critical value
    reference_rows: int
    window: int
    features: int
    threshold: float
    alpha: float
    critical: float  # PSI the worst feature must exceed to trip, > threshold
    min_detectable: float  # true PSI detected with probability DETECTION_POWER in one window
    window_needed: int | None  # smallest window at which threshold applies (None: none does)
    reference_needed: int | None  # smallest reference at which threshold applies at this window

    @property
    def message(self) -> str:
        fixes = []
        if self.window_needed is not None:
            fixes.append(f"windows of >= {self.window_needed} rows")
        if self.reference_needed is not None:
            fixes.append(f"a reference of >= {self.reference_needed} rows")
        fix = " or ".join(fixes) if fixes else "a larger reference and larger windows"
        return (f"drift reference too small for PSI threshold {self.threshold:g}: with {self.reference_rows} "
                f"reference rows, {self.window}-row windows, {self.features} features and false-alarm rate "
                f"{self.alpha:g}, a feature trips only above PSI {self.critical:.3f} (feature {self.feature!r}), "
                f"and {DETECTION_POWER:.0%} detection in one window needs a true PSI of {self.min_detectable:.3f}. "
                f"For {self.threshold:g} to apply, use {fix} (docs/drift.md).")


def _smallest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Smallest integer x in [lo, hi] with ok(x), for ok monotone (False then True); None if none."""
    if not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def power_check(reference: ReferenceStats, *, threshold: float = DEFAULT_THRESHOLD, window: int = DEFAULT_WINDOW,
                alpha: float = DEFAULT_FALSE_ALARM_RATE) -> PowerCheck | None:
    """None when `threshold` is the level that applies for every feature at `window` rows; else what
    the worst feature needs (the gateway at start, the registry at registration with the defaults)."""
    feats = reference.features
    if not feats:
        return None
    f_count = len(feats)
    crits = Calibration(feats, alpha).critical(window)
    j = int(np.argmax(crits))
    if crits[j] <= threshold:
        return None
    worst = feats[j]
    bins, empty = reference_slots(worst.fractions)
    m = max(int(worst.count), 1)

    def crit(n: int, mm: int) -> float:
        return critical_psi(n, mm, bins, empty=empty, features=f_count, alpha=alpha)

    return PowerCheck(
        feature=worst.name, reference_rows=m, window=window, features=f_count, threshold=threshold, alpha=alpha,
        critical=float(crits[j]),
        min_detectable=min_detectable_psi(window, m, bins, empty=empty, features=f_count, alpha=alpha,
                                          threshold=threshold),
        window_needed=_smallest(lambda n: crit(n, m) <= threshold, window, 10**9),
        reference_needed=_smallest(lambda mm: crit(window, mm) <= threshold, m, 10**9),
    )


def warn_if_underpowered(reference: ReferenceStats) -> PowerCheck | None:
    """Registration: log a warning when the default monitor settings cannot apply their threshold to
    this reference (the gateway checks again with the model's own policy when it serves it)."""
    check = power_check(reference)
    if check is not None:
        log.warning("%s (checked with the monitor defaults: window %d, threshold %g, false_alarm_rate %g)",
                    check.message, DEFAULT_WINDOW, DEFAULT_THRESHOLD, DEFAULT_FALSE_ALARM_RATE)
    return check


__all__ = [
    "DEFAULT_FALSE_ALARM_RATE", "DEFAULT_THRESHOLD", "DEFAULT_WINDOW", "SMOOTHING", "Calibration", "PowerCheck",
    "chi2_quantile", "critical_psi", "empty_slot_bias", "min_detectable_psi", "noise_floor", "power_check",
    "reference_slots", "warn_if_underpowered",
]
