"""The breast cancer data set that ships inside scikit-learn (569 rows, no download), shuffled with a
fixed seed and split into six day partitions for `inferloop train`:

    python examples/models/sklearn_gbm_onnx/data.py    # -> .inferloop/examples/sklearn_gbm_onnx/*.parquet

Columns: the 30 measurements, named as scikit-learn names them with `_` for spaces (`mean_radius`, …),
and `malignant` (1 for a malignant tumour, 0 for a benign one). The same files on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_breast_cancer

DAYS = 6
OUT = Path(".inferloop/examples/sklearn_gbm_onnx")


def write(out: Path = OUT, days: int = DAYS, seed: int = 0) -> Path:
    bunch = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    malignant = (bunch.target == 0).astype(np.int64)  # scikit-learn's class 0 is malignant
    order = np.random.default_rng(seed).permutation(len(malignant))
    out.mkdir(parents=True, exist_ok=True)
    for day, rows in enumerate(np.array_split(order, days)):
        table = pa.table({**{n: bunch.data[rows, i] for i, n in enumerate(names)}, "malignant": malignant[rows]})
        pq.write_table(table, out / f"2024-03-{day + 1:02d}.parquet")
    return out


if __name__ == "__main__":
    where = write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {DAYS} day partitions to {where}")
