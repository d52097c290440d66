"""Partition windows: resolve a policy's window to the exact partition list, read it, check it.

A partition is one Parquet file `<name>.parquet` in the source directory. The window resolves to
names (never a date range); each file is read once into memory, hashed and parsed from the same
bytes, so the digest recorded in the manifest is the digest of exactly what was trained on.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import msgspec
import numpy as np
from inferloop.registry.lineage import data_lineage
from inferloop.registry.manifest import DataLineage, DataPartition
from inferloop.trainer.errors import DataError

from inferloop.policy import DataSource, Kind

if TYPE_CHECKING:
    import pyarrow as pa

SUFFIX = ".parquet"
_F32_MAX = float(np.finfo(np.float32).max)  # training is float32: larger values would become inf


class Dataset(msgspec.Struct, frozen=True):
    x: np.ndarray  # float32, rows × features, in the policy's feature order
    y: np.ndarray  # float32, rows
    lineage: DataLineage


def source_dir(source: str) -> Path:
    """A plain path (relative to the working directory) or a file:// URI → absolute directory."""
    if "://" in source:
        parsed = urlparse(source)
        if parsed.scheme != "file":
            raise DataError(f"data source {source!r}: only local directories and file:// URIs are supported")
        path = Path(unquote(parsed.netloc + parsed.path))
    else:
        path = Path(source).expanduser()
    return path.absolute()


def list_partitions(directory: Path) -> list[str]:
    if not directory.is_dir():
        raise DataError(f"data source {directory} is not a directory")
    return sorted(p.name[: -len(SUFFIX)] for p in directory.iterdir()
                  if p.name.endswith(SUFFIX) and not p.name.startswith((".", "_")) and p.is_file())


def resolve_window(window: DataSource, source: str | None = None) -> tuple[str, list[str]]:
    """(source URI, exact partition names) for a policy's window; `source` overrides the policy's."""
    directory = source_dir(source or window.source)
    available = list_partitions(directory)
    if window.latest is not None:
        if not available:
            raise DataError(f"data source {directory} has no partitions (*{SUFFIX} files)")
        if len(available) < window.latest:
            raise DataError(f"data window asks for the latest {window.latest} partitions but {directory} "
                            f"has only {len(available)}")
        return f"file://{directory}", available[-window.latest:]
    assert window.partitions is not None
    missing = sorted(set(window.partitions) - set(available))
    if missing:
        raise DataError(f"partition(s) {', '.join(missing)} not found in {directory}")
    return f"file://{directory}", list(window.partitions)


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
                 expected: DataLineage | None = None) -> Dataset:
    """Read the named partitions in order. With `expected`, every digest must match it (reproduction)."""
    import pyarrow.parquet as pq

    directory = source_dir(uri)
    want = {p.name: p.digest for p in expected.partitions} if expected else {}
    parts: list[DataPartition] = []
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for name in names:
        path = directory / f"{name}{SUFFIX}"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"partition {name} not found in {directory}") from None
        except OSError as exc:
            raise DataError(f"partition {name}: cannot read {path}: {exc.strerror}") from None
        digest = hashlib.sha256(raw).hexdigest()
        if want and want.get(name) != digest:
            raise DataError(f"partition {name} changed since the version was built: digest {digest[:12]}… "
                            f"is not the recorded {str(want.get(name))[:12]}…")
        try:
            table = pq.read_table(io.BytesIO(raw))
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
        parts.append(DataPartition(name=name, digest=digest, rows=table.num_rows))
    if not parts:
        raise DataError("the data window resolved to no partitions")
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)
    return Dataset(x=x, y=y, lineage=data_lineage(uri, parts))


def holdout_split(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) row indices: a seeded random split, sorted, at least one row on each side."""
    if rows < 2:
        raise DataError(f"the data window has {rows} row(s): at least 2 are needed for a train/holdout split")
    perm = np.random.default_rng([seed, 0x401D]).permutation(rows)
    k = min(max(1, round(rows * fraction)), rows - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])


def holdout_digest(x: np.ndarray, y: np.ndarray, features: list[str]) -> str:
    """Digest of the exact holdout rows (float32 values and feature order): the data both gates saw."""
    h = hashlib.sha256()
    h.update("\0".join(features).encode())
    h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(y, dtype="<f4").tobytes())
    return h.hexdigest()
