"""Six days of store revenue, written as day partitions for `inferloop train`:

    python examples/models/tabular_embeddings/data.py    # -> .inferloop/examples/tabular_embeddings/*.parquet

Each row: a `store_id` (one of 50 stores, each with its own level of revenue), eight dense features
`d0`…`d7` and the `revenue` to predict. Seeded: the same files on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STORES, DENSE, DAYS, ROWS = 50, 8, 6, 400
OUT = Path(".inferloop/examples/tabular_embeddings")


def write(out: Path = OUT, days: int = DAYS, rows: int = ROWS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    store_effect = rng.normal(0, 15, STORES)  # what the embedding has to learn
    weights = rng.normal(0, 4, DENSE)
    out.mkdir(parents=True, exist_ok=True)
    for day in range(days):
        store = rng.integers(0, STORES, rows)
        dense = rng.normal(size=(rows, DENSE))
        revenue = (200 + store_effect[store] + dense @ weights + 3 * np.tanh(dense[:, 0] * dense[:, 1])
                   + rng.normal(0, 2, rows))
        table = pa.table({"store_id": pa.array(store, pa.int64()),
                          **{f"d{i}": dense[:, i] for i in range(DENSE)}, "revenue": revenue})
        pq.write_table(table, out / f"2024-03-{day + 1:02d}.parquet")
    return out


if __name__ == "__main__":
    where = write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {DAYS} day partitions of {ROWS} rows to {where}")
