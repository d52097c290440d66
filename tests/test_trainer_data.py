"""Synthetic data (`inferloop data generate`) and partition windows: exact partition lists with digests,
and every bad partition refused with a clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferloop.policy import DataSource
from inferloop.registry.lineage import file_digest
from inferloop.trainer.data import holdout_split, load_dataset, resolve_window
from inferloop.trainer.errors import DataError
from inferloop.trainer.synthetic import REGRESSION_FEATURES, generate

from .trainer_support import run_cli


def _read(path: Path) -> pa.Table:
    return pq.read_table(path)


def test_generate_is_deterministic_and_a_day_does_not_depend_on_the_day_count(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", days=3, rows_per_day=50, seed=5)
    b = generate(tmp_path / "b", days=5, rows_per_day=50, seed=5)
    c = generate(tmp_path / "c", days=3, rows_per_day=50, seed=6)
    assert [file_digest(p) for p in a] == [file_digest(p) for p in b[:3]]
    assert file_digest(a[0]) != file_digest(c[0])
    assert [p.name for p in a] == ["2024-01-01.parquet", "2024-01-02.parquet", "2024-01-03.parquet"]
    table = _read(a[0])
    assert table.num_rows == 50 and table.column_names == [*REGRESSION_FEATURES, "revenue"]


def test_covariate_and_concept_shift_start_on_the_drift_day(tmp_path: Path) -> None:
    cov = generate(tmp_path / "cov", days=4, rows_per_day=3000, drift_from=3, concept_shift=0.0)
    price = [float(np.mean(_read(p).column("price"))) for p in cov]
    assert max(price[:2]) * 1.15 < min(price[2:])  # inputs moved from day 3 on
    concept = generate(tmp_path / "concept", days=4, rows_per_day=3000, drift_from=3, covariate_shift=0.0)
    tables = [_read(p) for p in concept]
    visits = [float(np.mean(t.column("visits"))) for t in tables]
    revenue = [float(np.mean(t.column("revenue"))) for t in tables]
    assert max(visits) / min(visits) < 1.05  # inputs unchanged ...
    assert max(revenue[2:]) < min(revenue[:2]) - 50  # ... but their relation to the target changed


def test_data_generate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "data", "generate", "--out", str(tmp_path / "d"), "--days", "3",
                           "--rows-per-day", "20", "--kind", "classification", "--drift-from", "2")
    assert code == 0 and "3 partitions" in out and "drift from day 2 (2024-01-02)" in out
    labels = _read(tmp_path / "d" / "2024-01-01.parquet").column("churned").to_numpy()
    assert set(np.unique(labels)) <= {0, 1}
    assert (tmp_path / "d" / "_dataset.json").exists()


def test_window_resolves_to_exact_partitions_with_digests(tmp_path: Path) -> None:
    paths = generate(tmp_path / "d", days=5, rows_per_day=30)
    uri, names = resolve_window(DataSource(source=str(tmp_path / "d"), latest=2))
    assert uri == f"file://{tmp_path / 'd'}" and names == ["2024-01-04", "2024-01-05"]
    _, explicit = resolve_window(DataSource(source=uri, partitions=["2024-01-01", "2024-01-03"]))
    assert explicit == ["2024-01-01", "2024-01-03"]
    ds = load_dataset(uri, names, REGRESSION_FEATURES, "revenue", "regression")
    assert ds.x.shape == (60, len(REGRESSION_FEATURES)) and ds.x.dtype == np.float32
    assert [p.digest for p in ds.lineage.partitions] == [file_digest(p) for p in paths[3:]]
    assert [p.rows for p in ds.lineage.partitions] == [30, 30]
    expected = hashlib.sha256("".join(f"{p.name}\0{p.digest}\n" for p in ds.lineage.partitions).encode())
    assert ds.lineage.digest == expected.hexdigest()


@pytest.mark.parametrize(("window", "expected"), [
    ({"latest": 9}, "asks for the latest 9 partitions but .* has only 5"),
    ({"partitions": ["2024-01-01", "2023-12-31"]}, r"partition\(s\) 2023-12-31 not found"),
])
def test_missing_partitions(tmp_path: Path, window: dict, expected: str) -> None:
    generate(tmp_path / "d", days=5, rows_per_day=10)
    with pytest.raises(DataError, match=expected):
        resolve_window(DataSource(source=str(tmp_path / "d"), **window))


def test_empty_or_absent_source(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no partitions"):
        resolve_window(DataSource(source=str(tmp_path / "empty"), latest=1))
    with pytest.raises(DataError, match="is not a directory"):
        resolve_window(DataSource(source=str(tmp_path / "absent"), latest=1))
    with pytest.raises(DataError, match="unsupported scheme 'gs'"):
        resolve_window(DataSource(source="gs://bucket/data", latest=1))


def _write(directory: Path, name: str, columns: dict) -> None:
    directory.mkdir(exist_ok=True)
    pq.write_table(pa.table(columns), directory / f"{name}.parquet")


@pytest.mark.parametrize(("columns", "kind", "expected"), [
    ({"a": pa.array([], pa.float64()), "y": pa.array([], pa.float64())}, "regression", "is empty"),
    ({"a": [1.0, float("nan")], "y": [1.0, 2.0]}, "regression", "column 'a' has 1 NaN or infinite"),
    ({"a": [1.0, 2.0], "y": [float("inf"), 2.0]}, "regression", "column 'y' has 1 NaN or infinite"),
    ({"a": [1.0, None], "y": [1.0, 2.0]}, "regression", "column 'a' has 1 missing value"),
    ({"a": ["x", "y"], "y": [1.0, 2.0]}, "regression", "column 'a' has type string"),
    ({"b": [1.0, 2.0], "y": [1.0, 2.0]}, "regression", "has no column\\(s\\) 'a'"),
    ({"a": [1.0, 2.0], "y": [0, 2]}, "binary", "binary target 'y' must be 0/1"),
    ({"a": [1e300, 2.0], "y": [0.0, 1.0]}, "regression", "column .a. has 1 value\\(s\\) too large for float32"),
])
def test_bad_partition_is_refused(tmp_path: Path, columns: dict, kind: str, expected: str) -> None:
    _write(tmp_path / "d", "p1", columns)
    with pytest.raises(DataError, match=expected):
        load_dataset(f"file://{tmp_path / 'd'}", ["p1"], ["a"], "y", kind)


def test_unreadable_partition(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "p1.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_dataset(str(tmp_path / "d"), ["p1"], ["a"], "y", "regression")


def test_changed_partition_is_refused_when_digests_are_expected(tmp_path: Path) -> None:
    generate(tmp_path / "d", days=2, rows_per_day=10)
    before = load_dataset(str(tmp_path / "d"), ["2024-01-01"], ["price"], "revenue", "regression")
    generate(tmp_path / "d", days=2, rows_per_day=11)  # rewritten with other rows
    with pytest.raises(DataError, match="changed since the version was built"):
        load_dataset(str(tmp_path / "d"), ["2024-01-01"], ["price"], "revenue", "regression", expected=before.lineage)


def test_holdout_split_is_seeded_disjoint_and_complete() -> None:
    train, hold = holdout_split(100, 0.2, seed=1)
    assert len(hold) == 20 and len(train) == 80
    assert sorted(np.concatenate([train, hold]).tolist()) == list(range(100))
    again = holdout_split(100, 0.2, seed=1)
    assert np.array_equal(again[1], hold)
    assert not np.array_equal(holdout_split(100, 0.2, seed=2)[1], hold)
    with pytest.raises(DataError, match="at least 2"):
        holdout_split(1, 0.2, seed=1)
