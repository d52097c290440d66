"""False-trip and detection rates of the drift monitor's calibrated PSI decision (BENCHMARKS.md).

    python -m loadtests.bench_drift_calibration [--windows 3000] [--scale 1] [--seed 0]
    python -m loadtests.bench_drift_calibration --csv data.csv --columns 30 --csv-only   # a real data set

For each reference size M, window size n and number of features F: how often an undrifted window
trips (the new rule, PSI > max(threshold, critical), and the old one, PSI >= threshold), and how
often a window with a 0.5σ mean shift in one normally distributed feature trips.

Everything that decides is the project's own code: each reference is binned by
`registry.reference.bin_reference` from a fresh sample of M rows, a `DriftMonitor` built on it gives
the smoothed reference fractions and the critical values (its `Calibration`, built here for each
group of F features, for the window's n), and PSI is `monitor.psi_rows`. Only the live side is
drawn in closed form: the counts of
n i.i.d. rows in the reference's bins are exactly Multinomial(n, p) with p the true probability of
each slot (`slot_probs`, checked against counted raw rows in tests/test_drift_calibration.py), which
makes many windows per cell cheap. Five families (normal, lognormal, Poisson(2), integers 0–4,
normal with 5 % NaN) exercise ties, emptied bins and the missing slot; each is run alone and mixed
(features cycling through them). Rates average over many independently drawn references as well
as windows.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats

from inferloop.gateway.drift.monitor import DriftMonitor, psi_rows
from inferloop.policy import MonitorMethods, MonitorPolicy, PsiMethod
from inferloop.registry.drift_power import Calibration, critical_psi, min_detectable_psi
from inferloop.registry.manifest import ReferenceStats
from inferloop.registry.reference import bin_reference, reference_stats

THRESHOLD, ALPHA, SHIFT = 0.10, 0.01, 0.5
LN_SD = math.sqrt((math.e - 1) * math.e)  # standard deviation of lognormal(0, 1)
POISSON_MEAN = 2.0
INT_SD = math.sqrt(2.0)  # standard deviation of the uniform integers 0..4


@dataclass(frozen=True)
class Family:
    """A feature distribution: `draw` samples rows (shift in standard deviations); `below(edges,
    shift)` is P(X < e) for each edge, which is all that slot probabilities need."""

    name: str
    draw: Callable[[np.random.Generator, int, float], np.ndarray]
    below: Callable[[np.ndarray, float], np.ndarray]
    missing: float = 0.0


def _with_missing(draw: Callable[[np.random.Generator, int, float], np.ndarray], missing: float
                  ) -> Callable[[np.random.Generator, int, float], np.ndarray]:
    def out(rng: np.random.Generator, size: int, shift: float) -> np.ndarray:
        x = draw(rng, size, shift)
        x[rng.random(size) < missing] = np.nan
        return x
    return out


def _normal(rng: np.random.Generator, size: int, shift: float) -> np.ndarray:
    return rng.standard_normal(size) + shift


def _lognormal(rng: np.random.Generator, size: int, shift: float) -> np.ndarray:
    return np.exp(rng.standard_normal(size)) + shift * LN_SD


def _lognormal_below(edges: np.ndarray, shift: float) -> np.ndarray:
    y = edges - shift * LN_SD
    out: np.ndarray = np.where(y > 0, special.ndtr(np.log(np.maximum(y, 1e-300))), 0.0)
    return out


def _poisson(rng: np.random.Generator, size: int, shift: float) -> np.ndarray:
    return rng.poisson(POISSON_MEAN + shift * math.sqrt(POISSON_MEAN), size).astype(np.float64)


def _integer_below(edges: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    # integer-valued X: P(X < e) = P(X <= ceil(e) - 1)
    out: np.ndarray = cdf(np.ceil(edges) - 1)
    return out


def _uniform_int(rng: np.random.Generator, size: int, shift: float) -> np.ndarray:
    # a shift moves each value up by one with probability shift·sd (mean shift = shift·sd)
    x = rng.integers(0, 5, size).astype(np.float64)
    return x + (rng.random(size) < shift * INT_SD) if shift else x


def _uniform_int_cdf(k: np.ndarray, shift: float) -> np.ndarray:
    def base(v: np.ndarray) -> np.ndarray:
        return np.clip((np.floor(v) + 1) / 5, 0.0, 1.0)
    t = shift * INT_SD
    out: np.ndarray = (1 - t) * base(k) + t * base(k - 1)
    return out


NORMAL = Family("normal", _normal, lambda e, s: special.ndtr(e - s))
FAMILIES = (
    NORMAL,
    Family("lognormal", _lognormal, _lognormal_below),
    Family("poisson(2)", _poisson, lambda e, s: _integer_below(
        e, lambda k: stats.poisson.cdf(k, POISSON_MEAN + s * math.sqrt(POISSON_MEAN)))),
    Family("integers 0-4", _uniform_int, lambda e, s: _integer_below(e, lambda k: _uniform_int_cdf(k, s))),
    Family("normal + 5% NaN", _with_missing(_normal, 0.05), lambda e, s: special.ndtr(e - s), missing=0.05),
)


def slot_probs(family: Family, edges: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """True probability of each of the monitor's len(edges) + 2 slots (value bins, then missing)."""
    cdf = np.concatenate([[0.0], family.below(np.asarray(edges, dtype=np.float64), shift), [1.0]])
    p = np.append(np.clip(np.diff(cdf), 0.0, None) * (1 - family.missing), family.missing)
    out: np.ndarray = p / p.sum()
    return out


WIDTH = 50  # features per drawn reference set; a model with F features is a group of F of them
MODES = ("mixed", *(f.name for f in FAMILIES))  # features cycling through the families, or one family


def mode_families(mode: str, s: int) -> list[Family]:
    if mode == "mixed":
        return [FAMILIES[(j + s) % len(FAMILIES)] for j in range(WIDTH)]
    return [next(f for f in FAMILIES if f.name == mode)] * WIDTH


@dataclass
class Tally:
    """One (M, n, F, mode) cell: undrifted windows and trips, per cluster (windows that share one
    reference) for an honest standard error, and windows with one shifted normal feature."""

    windows: int = 0
    trips: int = 0  # calibrated rule
    trips_old: int = 0  # PSI >= threshold
    shifted: int = 0
    detected: int = 0
    clusters: list[float] = field(default_factory=list)  # trip rate of each reference's windows

    @property
    def rate(self) -> float:
        return self.trips / max(self.windows, 1)

    @property
    def rate_old(self) -> float:
        return self.trips_old / max(self.windows, 1)

    @property
    def detection(self) -> float:
        return self.detected / max(self.shifted, 1)

    @property
    def standard_error(self) -> float:
        """The larger of the binomial SE at a 1 % rate and the SE across references (windows that
        share a reference are correlated when the reference's own noise dominates, n >> M)."""
        binomial = math.sqrt(0.01 * 0.99 / max(self.windows, 1))
        k = len(self.clusters)
        spread = float(np.std(self.clusters, ddof=1) / math.sqrt(k)) if k > 1 else 1.0
        return max(binomial, spread)


def measure(m: int, ns: Sequence[int], fs: Sequence[int], mode: str, sets: int, windows_per_set: int,
            rng: np.random.Generator) -> dict[tuple[int, int], Tally]:
    """Tallies per (n, F) for references of `m` rows: `sets` reference sets of WIDTH features, each
    split into WIDTH // F monitored models of F features, each judging `windows_per_set` windows of
    n rows. Detection (normal mode only): the first feature of each model shifted by SHIFT σ."""
    policy = MonitorPolicy(methods=MonitorMethods(psi=PsiMethod(THRESHOLD, false_alarm_rate=ALPHA)))
    out = {(n, f): Tally() for n in ns for f in fs}
    detect = mode == NORMAL.name
    for s in range(sets):
        families = mode_families(mode, s)
        refs = [bin_reference(f"f{j}", fam.draw(rng, m, 0.0)) for j, fam in enumerate(families)]
        whole = DriftMonitor(ReferenceStats(features=refs, sample_size=m), policy)
        # the critical values of every model of F features (alpha / F for each of their features)
        models = {f: Calibration(refs, whole.false_alarm_rate, tested=f) for f in fs}
        # features with the same number of slots are drawn and scored together
        groups: dict[int, list[int]] = {}
        for j, edges in enumerate(whole.edges):
            groups.setdefault(len(edges) + 2, []).append(j)
        stacked = []
        for cols in groups.values():
            expected = np.stack([whole.expected[j] for j in cols])
            totals = np.array([[whole.reference_n[j]] for j in cols])
            p0 = np.stack([slot_probs(families[j], whole.edges[j]) for j in cols])
            p1 = np.stack([slot_probs(families[j], whole.edges[j], SHIFT) for j in cols]) if detect else None
            stacked.append((cols, expected, totals, p0, p1))
        for n in ns:
            null = np.empty((windows_per_set, WIDTH))
            shifted = np.empty_like(null) if detect else None
            for cols, expected, totals, p0, p1 in stacked:
                counts = rng.multinomial(n, p0, size=(windows_per_set, len(cols)))
                null[:, cols] = psi_rows(counts, expected, totals)
                if shifted is not None and p1 is not None:
                    counts = rng.multinomial(n, p1, size=(windows_per_set, len(cols)))
                    shifted[:, cols] = psi_rows(counts, expected, totals)
            for f, calibration in models.items():
                tally, k = out[(n, f)], WIDTH // f  # k models of f features: columns [g*f, (g+1)*f)
                level = np.maximum(THRESHOLD, calibration.critical(n))[: k * f].reshape(k, f)
                x = null[:, : k * f].reshape(windows_per_set, k, f)
                trips = (x > level).any(axis=2)  # (windows, models)
                tally.windows += trips.size
                tally.trips += int(trips.sum())
                tally.trips_old += int((x >= THRESHOLD).any(axis=2).sum())
                tally.clusters.extend(trips.mean(axis=0).tolist())
                if shifted is not None:
                    x = x.copy()
                    x[:, :, 0] = shifted[:, 0 : k * f : f]
                    tally.shifted += trips.size
                    tally.detected += int((x > level).any(axis=2).sum())
    return out


def references_for(m: int) -> int:
    """Reference sets per M and mode: many where a reference's own noise dominates (small M), which
    is also where they are cheap to bin; at least 100."""
    return min(500, max(100, round(150_000 / m)))


def critical_continuous(m: int, n: int, f: int) -> float:
    """Critical PSI of a continuous feature (10 bins, no NaN in the reference)."""
    return critical_psi(n, m, 10, empty=1, features=f, alpha=ALPHA)


MS = (300, 455, 1000, 5000, 20000)
NS = (100, 114, 500, 1000, 5000)
FS = (1, 10, 30, 50)


def real_splits(x: np.ndarray, holdout: float, splits: int, rng: np.random.Generator) -> tuple[float, float]:
    """A real data set, end to end through DriftMonitor with raw rows: each seeded random split's
    training rows are the reference (`reference_stats`), its holdout rows one window. Returns the
    false-trip rates (old rule, calibrated) over `splits` splits."""
    n_hold = round(len(x) * holdout)
    names = [f"f{j}" for j in range(x.shape[1])]
    old = new = 0
    for _ in range(splits):
        order = rng.permutation(len(x))
        train, hold = x[order[n_hold:]], x[order[:n_hold]]
        policy = MonitorPolicy(window=n_hold, min_samples=n_hold,
                               methods=MonitorMethods(psi=PsiMethod(THRESHOLD, false_alarm_rate=ALPHA)))
        monitor = DriftMonitor(reference_stats(train, names), policy)
        monitor.observe(hold)
        result = monitor.close_window()
        old += result.max_psi >= THRESHOLD
        new += result.drifted
    return old / splits, new / splits


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--windows", type=int, default=3000, help=f"windows per cell of {WIDTH} features")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the reference sets drawn per M")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", help="also (or only, with --csv-only) a real data set: a CSV of numeric columns "
                                  "with one header line; each of --splits random 80/20 splits is one window")
    ap.add_argument("--columns", type=int, default=None, help="use the CSV's first N columns (default: all)")
    ap.add_argument("--splits", type=int, default=2000)
    ap.add_argument("--csv-only", action="store_true")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    if args.csv:
        logging.getLogger("inferloop.registry").setLevel(logging.ERROR)  # small references are the point
        data = np.genfromtxt(args.csv, delimiter=",", skip_header=1)[:, : args.columns]
        old, new = real_splits(data, 0.2, args.splits, rng)
        print(f"{args.csv}: {len(data)} rows x {data.shape[1]} features, {args.splits} random 80/20 splits "
              f"(reference {len(data) - round(len(data) * 0.2)} rows, window {round(len(data) * 0.2)} rows): "
              f"false trips old rule {100 * old:.1f} %, calibrated {100 * new:.2f} %\n")
        if args.csv_only:
            return
    print(f"threshold {THRESHOLD}, false_alarm_rate {ALPHA}, seed {args.seed}; modes: {', '.join(MODES)}; "
          f"windows per mode: {args.windows} at F={WIDTH}, {WIDTH}/F times that below\n")
    print("| M | n | F | critical | false trips, old rule (worst mode) | false trips, calibrated: worst mode (± SE) "
          "| mixed | detection of 0.5σ | true PSI for 80 % |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst: tuple[float, str] = (0.0, "")
    trips = windows = 0
    for m in MS:
        sets = max(1, round(references_for(m) * args.scale))
        per_set = max(1, math.ceil(args.windows / sets))
        tallies = {mode: measure(m, NS, FS, mode, sets, per_set, rng) for mode in MODES}
        for n in NS:
            for f in FS:
                cell = {mode: t[(n, f)] for mode, t in tallies.items()}
                bad = max(cell, key=lambda mode: cell[mode].rate)
                old = max(t.rate_old for t in cell.values())
                trips += sum(t.trips for t in cell.values())
                windows += sum(t.windows for t in cell.values())
                se = cell[bad].standard_error
                if cell[bad].rate > worst[0]:
                    worst = (cell[bad].rate, f"M={m}, n={n}, F={f}, {bad}, SE {100 * se:.2f} %")
                mde = min_detectable_psi(n, m, 10, empty=1, features=f, alpha=ALPHA, threshold=THRESHOLD)
                print(f"| {m} | {n} | {f} | {critical_continuous(m, n, f):.3f} | {100 * old:.1f} % | "
                      f"{100 * cell[bad].rate:.2f} % ± {100 * se:.2f} ({bad}) | {100 * cell['mixed'].rate:.2f} % | "
                      f"{100 * cell[NORMAL.name].detection:.1f} % | {mde:.3f} |", flush=True)
    print(f"\nworst cell {100 * worst[0]:.2f} % ({worst[1]}); pooled {100 * trips / max(windows, 1):.2f} % over "
          f"{windows} windows; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
