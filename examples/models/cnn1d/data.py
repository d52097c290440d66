"""Six days of labelled sequences, written as day partitions for `inferloop train`:

    python examples/models/cnn1d/data.py    # -> .inferloop/examples/cnn1d/*.parquet

Each row is one 32-step sequence, stored as columns `s00`…`s31`, and `event` (0/1): whether a short
pulse is hidden somewhere in the noise. Where the pulse sits varies, so the classifier has to look for
a shape, not at a position: what a convolution is for. Seeded: the same files on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STEPS, DAYS, ROWS = 32, 6, 300
COLUMNS = [f"s{t:02d}" for t in range(STEPS)]
OUT = Path(".inferloop/examples/cnn1d")


def write(out: Path = OUT, days: int = DAYS, rows: int = ROWS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    out.mkdir(parents=True, exist_ok=True)
    for day in range(days):
        event = rng.random(rows) < 0.5
        centre = rng.uniform(4, STEPS - 4, rows)[:, None]
        pulse = 3.0 * np.exp(-0.5 * ((t[None, :] - centre) / 1.5) ** 2)
        sequence = rng.normal(0, 1, (rows, STEPS)) + event[:, None] * pulse
        table = pa.table({**{c: sequence[:, i] for i, c in enumerate(COLUMNS)},
                          "event": pa.array(event.astype(np.int64))})
        pq.write_table(table, out / f"2024-03-{day + 1:02d}.parquet")
    return out


if __name__ == "__main__":
    where = write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {DAYS} day partitions of {ROWS} rows to {where}")
