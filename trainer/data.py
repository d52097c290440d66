"""Partition windows: resolve a policy's window to the exact partition list, read it, check it.

A partition is one Parquet file `<name>.parquet` in the source: a local directory or an `s3://`
prefix (`partition_source`). The window resolves to
names (never a date range); each file is read once into memory, hashed and parsed from the same
bytes, so the digest recorded in the manifest is the digest of exactly what was trained on.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from inferloop.policy import DataSource, Kind
from inferloop.registry.lineage import data_lineage
from inferloop.registry.manifest import DataLineage, DataPartition
from inferloop.trainer.errors import DataError
from inferloop.trainer.partition_source import SUFFIX, PartitionSource, open_source

if TYPE_CHECKING:
    import pyarrow as pa

_F32_MAX = float(np.finfo(np.float32).max)  # training is float32: larger values would become inf
# Below these a build is refused (exit 2) before training: a model fitted on a handful of rows, or
# judged on a handful, passes or fails its gates by chance.
MIN_TRAIN_ROWS, MIN_HOLDOUT_ROWS = 20, 20


class Dataset(msgspec.Struct, frozen=True):
    x: np.ndarray  # float32, rows × features, in the policy's feature order
    y: np.ndarray  # float32, rows
    lineage: DataLineage
    table: pa.Table  # every column of every partition, in order (what entrypoints receive)


def resolve_window(window: DataSource, source: str | None = None, s3_endpoint: str | None = None
                   ) -> tuple[str, list[str]]:
    """(source URI, exact partition names) for a policy's window; `source` overrides the policy's."""
    with open_source(source or window.source, s3_endpoint) as src:
        available = src.names()
        where = src.uri
    if window.latest is not None:
        if not available:
            raise DataError(f"data source {where} has no partitions (*{SUFFIX} files)")
        if len(available) < window.latest:
            raise DataError(f"data window asks for the latest {window.latest} partitions but {where} "
                            f"has only {len(available)}")
        return where, available[-window.latest:]
    assert window.partitions is not None
    missing = sorted(set(window.partitions) - set(available))
    if missing:
        raise DataError(f"partition(s) {', '.join(missing)} not found in {where}")
    return where, list(window.partitions)


def _column(table: pa.Table, name: str, partition: str) -> np.ndarray:
    import pyarrow as pa

    col = table.column(name)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise DataError(f"partition {partition}: column {name!r} has type {col.type}, expected a number")
    if col.null_count:
        raise DataError(f"partition {partition}: column {name!r} has {col.null_count} missing value(s)")
    values: np.ndarray = col.to_numpy().astype(np.float64)  # pyarrow is not followed: Any to mypy
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise DataError(f"partition {partition}: column {name!r} has {bad} NaN or infinite value(s)")
    huge = int(np.count_nonzero(np.abs(values) > _F32_MAX))
    if huge:
        raise DataError(f"partition {partition}: column {name!r} has {huge} value(s) too large for float32")
    return values


def load_dataset(uri: str, names: list[str], features: list[str], target: str, kind: Kind,
                 expected: DataLineage | None = None, s3_endpoint: str | None = None) -> Dataset:
    """Read the named partitions in order, each once. With `expected`, every digest must match it
    (reproduction). `uri`: a directory, file:// or s3:// URI (`partition_source`)."""
    with open_source(uri, s3_endpoint) as source:
        return _load(source, names, features, target, kind, expected)


def _load(source: PartitionSource, names: list[str], features: list[str], target: str, kind: Kind,
          expected: DataLineage | None) -> Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = {p.name: p.digest for p in expected.partitions} if expected else {}
    parts: list[DataPartition] = []
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    tables: list[pa.Table] = []
    for name in names:
        raw = source.read(name)
        digest = hashlib.sha256(raw).hexdigest()
        if want and want.get(name) != digest:
            raise DataError(f"partition {name} changed since the version was built: digest {digest[:12]}… "
                            f"is not the recorded {str(want.get(name))[:12]}…")
        try:
            # no read-ahead cache: the bytes are in memory, and its futures could outlive this call
            table = pq.read_table(pa.BufferReader(raw), pre_buffer=False)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise DataError(f"partition {name}: not a readable Parquet file ({exc})") from None
        if table.num_rows == 0:
            raise DataError(f"partition {name} is empty (0 rows)")
        absent = [c for c in [*features, target] if c not in table.column_names]
        if absent:
            raise DataError(f"partition {name} has no column(s) {', '.join(map(repr, absent))} "
                            f"(it has {', '.join(table.column_names)})")
        xs.append(np.stack([_column(table, f, name) for f in features], axis=1))
        y = _column(table, target, name)
        if kind == "binary" and not np.isin(y, (0.0, 1.0)).all():
            raise DataError(f"partition {name}: binary target {target!r} must be 0/1, found "
                            f"{np.unique(y[~np.isin(y, (0.0, 1.0))])[:5].tolist()}")
        ys.append(y)
        tables.append(table)
        parts.append(DataPartition(name=name, digest=digest, rows=table.num_rows))
    if not parts:
        raise DataError("the data window resolved to no partitions")
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)
    try:
        combined = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the partitions' columns do not agree: {exc}") from None
    return Dataset(x=x, y=y, lineage=data_lineage(source.uri, parts), table=combined)


def holdout_split(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) row indices: a seeded random split, sorted, at least one row on each side."""
    if rows < 2:
        raise DataError(f"the data window has {rows} row(s): at least 2 are needed for a train/holdout split")
    perm = np.random.default_rng([seed, 0x401D]).permutation(rows)
    k = min(max(1, round(rows * fraction)), rows - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])


def training_split(y: np.ndarray, fraction: float, seed: int, kind: Kind,
                   target: str) -> tuple[np.ndarray, np.ndarray]:
    """`holdout_split`, refused before any training when a side is too small to learn from or to judge
    with, or when a binary target has a single class in the training rows (nothing to learn)."""
    rows = len(y)
    train, hold = holdout_split(rows, fraction, seed) if rows >= 2 else (np.arange(rows), np.arange(0))
    if len(train) < MIN_TRAIN_ROWS or len(hold) < MIN_HOLDOUT_ROWS:
        raise DataError(f"the data window has {rows} row(s): {len(train)} to train on and {len(hold)} held out "
                        f"(training.holdout_fraction {fraction:g}); at least {MIN_TRAIN_ROWS} training and "
                        f"{MIN_HOLDOUT_ROWS} holdout rows are needed: widen the window")
    if kind == "binary":
        classes = np.unique(y[train])
        if len(classes) < 2:
            raise DataError(f"binary target {target!r} is {classes[0]:g} in all {len(train)} training rows: "
                            "a classifier needs both classes to learn from")
    return train, hold


def holdout_digest(x: np.ndarray, y: np.ndarray, features: list[str]) -> str:
    """Digest of the exact holdout rows (float32 values and feature order): the data both gates saw."""
    h = hashlib.sha256()
    h.update("\0".join(features).encode())
    h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(y, dtype="<f4").tobytes())
    return h.hexdigest()
