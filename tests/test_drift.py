"""Streaming PSI: correctness against an offline computation, false-trip rate on undrifted data,
detection of a small shift, hysteresis, cooldown, and mergeable counts."""

from __future__ import annotations

import numpy as np
import pytest

from inferloop.gateway.drift.monitor import DriftMonitor, psi
from inferloop.policy import MonitorMethods, MonitorPolicy, PsiMethod
from inferloop.registry.drift_power import noise_floor
from inferloop.registry.reference import reference_stats

FEATURES = [f"f{i}" for i in range(8)]


def _data(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Mixed scales and shapes, like real tabular inputs."""
    x = np.column_stack([
        rng.normal(0, 1, n), rng.normal(100, 15, n), rng.lognormal(0, 1, n), rng.uniform(-5, 5, n),
        rng.exponential(2, n), rng.normal(0, 0.01, n), rng.integers(0, 5, n).astype(float), rng.normal(3, 2, n),
    ])
    x[:, 0] += shift  # shift is in units of feature 0's standard deviation (1)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    return reference_stats(_data(rng, 20_000), FEATURES)


def DriftConfig(threshold: float = 0.10, exit_threshold: float | None = None, **kw) -> MonitorPolicy:  # noqa: N802
    return MonitorPolicy(methods=MonitorMethods(psi=PsiMethod(threshold, exit_threshold)), **kw)


def test_psi_matches_offline_formula(reference) -> None:
    rng = np.random.default_rng(1)
    live = _data(rng, 3000, shift=0.3)
    mon = DriftMonitor(reference, DriftConfig(window=3000))
    for chunk in np.array_split(live, 47):  # uneven micro-batches
        mon.observe(chunk)
    result = mon.close_window()
    f0 = reference.features[0]
    # offline: bins by the stored edges (+ the missing bin), +0.5 smoothing on both sides
    idx = np.digitize(live[:, 0].astype(np.float64), f0.edges, right=False)
    a = np.bincount(idx, minlength=len(f0.edges) + 2).astype(float)
    e = np.asarray(f0.fractions) * f0.count
    a, e = a + 0.5, e + 0.5
    a, e = a / a.sum(), e / e.sum()
    assert result.features[0].psi == pytest.approx(float(np.sum((a - e) * np.log(a / e))), rel=1e-9)
    assert result.n == 3000 and sum(result.features[0].counts) == 3000


def test_missing_values_and_open_outer_bins(reference) -> None:
    mon = DriftMonitor(reference, DriftConfig(window=10, min_samples=1))
    batch = np.zeros((4, 8), dtype=np.float32)
    batch[0, 0] = np.nan
    batch[1, 0] = -1e30
    batch[2, 0] = 1e30
    mon.observe(batch)
    counts = mon.close_window().features[0].counts
    assert counts[-1] == 1  # missing bin
    assert counts[0] == 1 and counts[-2] == 1  # open outer bins take the extremes


def test_single_empty_bin_does_not_trip() -> None:
    """Smoothing, not epsilon: a rare bin that happens to be empty in a window is not drift."""
    expected = np.array([0.33, 0.33, 0.33, 0.01])
    counts = np.array([34, 33, 33, 0])  # 100 rows, none in the 1 % bin: likely by chance (37 %)
    assert psi(counts, expected, 10_000) < 0.01
    a = np.maximum(counts / counts.sum(), 1e-6)  # what an epsilon would make of it
    assert float(np.sum((a - expected) * np.log(a / expected))) > 0.05


def test_undrifted_windows_trip_less_than_one_percent(reference) -> None:
    """Defaults (threshold 0.10, 10 bins, window 1000, min_samples 500): false-trip rate << 1 %."""
    rng = np.random.default_rng(2)
    config = DriftConfig()
    windows, trips, psis = 400, 0, []
    mon = DriftMonitor(reference, config)
    for _ in range(windows):
        mon.observe(_data(rng, config.min_samples))  # the smallest window we would trust
        r = mon.close_window()
        trips += r.drifted
        psis.append(r.max_psi)
    assert trips / windows < 0.01
    # and the reported noise floor is the right order of magnitude for the observed per-feature PSI
    floor = noise_floor(config.min_samples, reference.sample_size, 10)
    assert 0.3 * floor < np.mean([f.psi for f in r.features]) < 3 * floor


def test_half_sigma_shift_in_one_feature_trips_within_two_windows(reference) -> None:
    rng = np.random.default_rng(3)
    config = DriftConfig()
    mon = DriftMonitor(reference, config, reference_version=1)
    mon.observe(_data(rng, config.window))
    assert not mon.close_window().drifted
    tripped_at = None
    for w in range(2):
        mon.observe(_data(rng, config.window, shift=0.5))
        assert mon.window_ready()
        r = mon.close_window()
        if mon.should_trigger():
            tripped_at = w
            break
    assert tripped_at is not None
    assert max(r.features, key=lambda f: f.psi).feature == "f0"


def test_hysteresis_consecutive_and_cooldown(reference) -> None:
    rng = np.random.default_rng(4)
    now = [1000.0]
    config = DriftConfig(consecutive=2, cooldown_s=600, threshold=0.1, exit_threshold=0.05)
    mon = DriftMonitor(reference, config, reference_version=3, clock=lambda: now[0])
    mon.observe(_data(rng, 1000, shift=1.0))
    mon.close_window()
    assert not mon.should_trigger()  # one window over threshold is not enough
    mon.observe(_data(rng, 1000, shift=1.0))
    mon.close_window()
    assert mon.should_trigger()
    key = mon.idempotency_key("m")
    mon.mark_triggered()
    mon.observe(_data(rng, 1000, shift=1.0))
    mon.close_window()
    assert not mon.should_trigger()  # cooling down
    assert mon.idempotency_key("m") == key  # replicas in the same period agree on the key
    now[0] += 601
    assert mon.should_trigger()
    # undrifted traffic below the exit threshold leaves the drifted state
    mon.observe(_data(rng, 1000))
    mon.close_window()
    assert mon.state.state == "ok" and not mon.should_trigger()


def test_counts_are_mergeable_across_replicas(reference) -> None:
    rng = np.random.default_rng(5)
    batch = _data(rng, 2000, shift=0.2)
    whole = DriftMonitor(reference, DriftConfig())
    whole.observe(batch)
    a, b = DriftMonitor(reference, DriftConfig()), DriftMonitor(reference, DriftConfig())
    a.observe(batch[:700])
    b.observe(batch[700:])
    assert np.array_equal(a.total + b.total, whole.total)


def _live(seed: int, n: int, shift: float, nan_every: int, nan_column: int) -> np.ndarray:
    rows = _data(np.random.default_rng(seed), n, shift=shift)
    rows[::nan_every, nan_column] = np.nan
    return rows


def _fresh(reference) -> DriftMonitor:  # noqa: ANN001 - ReferenceStats
    return DriftMonitor(reference, DriftConfig(window=10_000))


def _at_once(reference, rows: np.ndarray) -> DriftMonitor:  # noqa: ANN001 - ReferenceStats
    """The monitor that observed `rows` as one batch: what any other way of feeding them must equal."""
    mon = _fresh(reference)
    mon.observe(rows)
    return mon


def test_rows_observed_one_by_one_count_as_one_batch(reference) -> None:
    """Small batches are held and binned together (DriftMonitor.observe); whatever reads the
    counts (a closed window, the exported totals) sees every row observed so far, NaN included."""
    rows = _live(8, 1500, 0.3, nan_every=97, nan_column=0)
    one, many = _at_once(reference, rows), _fresh(reference)
    for i in range(0, 1300, 1):
        many.observe(rows[i:i + 1])
    assert many.rows == 1300 and 0 < many._held_rows < 1300  # some rows folded, the rest still held
    many.observe(rows[1300:])
    assert np.array_equal(many.total, one.total) and many.total.sum() == 1500 * len(one.names)
    assert many.close_window().features == one.close_window().features


def test_column_blocks_count_as_the_stacked_rows(reference) -> None:
    """A batch given as column blocks (a model's inputs, then its output's column) counts exactly as
    the same rows stacked into one array, whichever way batches alternate; blocks whose rows or
    widths do not make the features are ignored, as a wrong-width array is."""
    rows = _live(9, 1400, 0.2, nan_every=53, nan_column=7)
    one, blocks = _at_once(reference, rows), _fresh(reference)
    for i in range(0, 1400, 7):
        part = rows[i:i + 7]
        if i % 3:
            blocks.observe(part[:, :7], part[:, 7:])
        else:  # another layout in between: what is held is binned first
            blocks.observe(part[:, :3], part[:, 3:])
    blocks.observe(rows[:5, :7], rows[:4, 7:])  # rows disagree
    blocks.observe(rows[:5, :6], rows[:5, 7:])  # one column short
    blocks.observe(rows[:5, :7], rows[:5, 7])  # not a column block
    assert blocks.rows == 1400
    assert np.array_equal(blocks.total, one.total)
    assert blocks.close_window().features == one.close_window().features


def test_a_wide_model_holds_fewer_rows_and_counts_the_same() -> None:
    """Rows wait for binning in a buffer of at most FOLD_BYTES: 3,000 features hold 43 rows, and 100
    single rows plus one batch larger than the buffer count exactly as one batch of all of them."""
    from inferloop.gateway.drift.monitor import FOLD_BYTES

    rng = np.random.default_rng(11)
    names = [f"w{i}" for i in range(3000)]
    wide = reference_stats(rng.normal(size=(500, 3000)).astype(np.float32), names)
    rows = rng.normal(0.2, 1, size=(160, 3000)).astype(np.float32)
    one, many = _at_once(wide, rows), _fresh(wide)
    assert len(many._held) == FOLD_BYTES // (8 * 3000) == 43
    for i in range(100):
        many.observe(rows[i:i + 1])
    many.observe(rows[100:])
    assert many.rows == 160 and np.array_equal(many.total, one.total)


def test_time_window_needs_min_samples(reference) -> None:
    now = [0.0]
    mon = DriftMonitor(reference, DriftConfig(window=10_000, window_seconds=60, min_samples=500),
                       clock=lambda: now[0])
    mon.observe(_data(np.random.default_rng(6), 100))
    now[0] = 120
    assert not mon.window_ready()  # old enough but too few rows to mean anything
    mon.observe(_data(np.random.default_rng(7), 400))
    assert mon.window_ready()
