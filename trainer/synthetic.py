"""`inferloop data generate`: day-partitioned synthetic tabular data with a known ground truth.

Two problems, each with mixed feature scales, correlated features, irrelevant features and noise:
- regression (`revenue`): daily revenue of a store from price, competition, marketing, traffic…
- classification (`churned`): whether a subscriber churns, from tenure, charges, support tickets…

From day `drift_from` on, a covariate shift (inputs move) and a concept shift (the input→target
relation changes) start, each scaled by its strength (0 turns it off). Each day is drawn from its
own generator seeded by (seed, kind, day), so a day's bytes do not depend on how many days are
generated, and the same arguments always write the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec
import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

DataKind = Literal["regression", "classification"]

REGRESSION_FEATURES = ["price", "competitor_price", "marketing_spend", "visits", "discount", "store_size",
                       "temperature", "noise_a", "noise_b"]
CLASSIFICATION_FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_tickets",
                           "usage_hours", "contract_months", "last_login_days", "noise_a", "noise_b"]
TARGETS = {"regression": "revenue", "classification": "churned"}
_KIND_CODE = {"regression": 1, "classification": 2}


class DatasetInfo(msgspec.Struct, frozen=True):
    """Written next to the partitions as `_dataset.json` (not a partition: only *.parquet are)."""

    kind: DataKind
    seed: int
    start: str
    days: int
    rows_per_day: int
    drift_from: int | None  # 1-based day number of the first shifted day
    covariate_shift: float
    concept_shift: float
    features: list[str]
    target: str
    ground_truth: str


def _revenue_day(rng: np.random.Generator, n: int, cov: float, concept: float) -> dict[str, np.ndarray]:
    price = rng.lognormal(np.log(40.0 * (1 + 0.25 * cov)), 0.35, n)
    competitor_price = price * (1 + rng.normal(0.0, 0.08, n))  # correlated with price
    marketing_spend = rng.gamma(2.0, 2500.0 * (1 + 0.5 * cov), n)
    visits = rng.poisson(300 + 0.02 * marketing_spend).astype(np.int64)  # correlated with marketing
    discount = rng.uniform(0.0, 0.4, n)
    store_size = rng.uniform(50.0, 500.0, n)
    temperature = rng.normal(15.0 + 6.0 * cov, 8.0, n)
    noise_a = rng.normal(0.0, 1.0, n)  # irrelevant
    noise_b = rng.uniform(0.0, 1000.0, n)  # irrelevant, large scale
    discount_effect = 1.5 * (1 - concept)  # concept shift: discounts stop paying off
    revenue = (50.0 + 0.9 * visits * (1 + discount_effect * discount) * (competitor_price / price) ** 1.2
               + 0.004 * marketing_spend + 0.3 * store_size + 2.0 * np.maximum(temperature, 0.0)
               + rng.normal(0.0, 25.0, n))
    return {"price": price, "competitor_price": competitor_price, "marketing_spend": marketing_spend,
            "visits": visits, "discount": discount, "store_size": store_size, "temperature": temperature,
            "noise_a": noise_a, "noise_b": noise_b, "revenue": revenue}


def _churn_day(rng: np.random.Generator, n: int, cov: float, concept: float) -> dict[str, np.ndarray]:
    tenure = np.minimum(rng.exponential(24.0, n), 72.0)
    monthly = np.clip(rng.normal(65.0 + 15.0 * cov, 25.0, n), 15.0, 150.0)
    total = tenure * monthly * (1 + rng.normal(0.0, 0.05, n))  # correlated with tenure × charges
    tickets = rng.poisson(1.2, n).astype(np.int64)
    usage = rng.gamma(3.0, 10.0 * (1 - 0.3 * min(cov, 1.0)), n)
    contract = rng.choice(np.array([1, 12, 24], dtype=np.int64), n, p=[0.5, 0.3, 0.2])
    last_login = rng.exponential(7.0, n)
    noise_a = rng.normal(0.0, 1.0, n)
    noise_b = rng.uniform(0.0, 100.0, n)
    logit = 4.5 * (0.9 - 0.09 * tenure * (1 - 0.5 * concept) + 0.035 * (monthly - 65.0)
                   + (0.8 + 0.6 * concept) * tickets - 0.05 * usage - 0.1 * contract + 0.18 * last_login)
    churned = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return {"tenure_months": tenure, "monthly_charges": monthly, "total_charges": total,
            "support_tickets": tickets, "usage_hours": usage, "contract_months": contract,
            "last_login_days": last_login, "noise_a": noise_a, "noise_b": noise_b, "churned": churned}


_GENERATORS: dict[str, Callable[[np.random.Generator, int, float, float], dict[str, np.ndarray]]] = {
    "regression": _revenue_day, "classification": _churn_day,
}
_GROUND_TRUTH = {
    "regression": "revenue = 50 + 0.9·visits·(1 + 1.5·(1−concept)·discount)·(competitor_price/price)^1.2 "
                  "+ 0.004·marketing_spend + 0.3·store_size + 2·max(temperature, 0) + N(0, 25²)",
    "classification": "P(churned) = σ(4.5·(0.9 − 0.09·tenure·(1−0.5·concept) + 0.035·(monthly_charges−65) "
                      "+ (0.8+0.6·concept)·support_tickets − 0.05·usage_hours − 0.1·contract_months "
                      "+ 0.18·last_login_days))",
}


def day_table(kind: DataKind, seed: int, day: int, rows: int, shifted: bool, covariate_shift: float,
              concept_shift: float) -> pa.Table:
    """One day's rows as a pyarrow Table (day is 0-based)."""
    import pyarrow as pa

    rng = np.random.default_rng([seed, _KIND_CODE[kind], day])
    cols = _GENERATORS[kind](rng, rows, covariate_shift if shifted else 0.0, concept_shift if shifted else 0.0)
    return pa.table(cols)


def generate(out: str | os.PathLike[str], *, kind: DataKind = "regression", days: int = 30,
             rows_per_day: int = 1000, seed: int = 0, start: dt.date = dt.date(2024, 1, 1),
             drift_from: int | None = None, covariate_shift: float = 1.0, concept_shift: float = 1.0) -> list[Path]:
    """Write `days` partitions `YYYY-MM-DD.parquet` into `out`; returns their paths."""
    import pyarrow.parquet as pq

    if days < 1 or rows_per_day < 1:
        raise ValueError("days and rows per day must be at least 1")
    if drift_from is not None and drift_from < 1:
        raise ValueError("the drift day is 1-based: the first day is 1")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for day in range(days):
        shifted = drift_from is not None and day + 1 >= drift_from
        table = day_table(kind, seed, day, rows_per_day, shifted, covariate_shift, concept_shift)
        path = root / f"{start + dt.timedelta(days=day):%Y-%m-%d}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)  # readers never see a half-written partition
        paths.append(path)
    features = REGRESSION_FEATURES if kind == "regression" else CLASSIFICATION_FEATURES
    info = DatasetInfo(kind=kind, seed=seed, start=start.isoformat(), days=days, rows_per_day=rows_per_day,
                       drift_from=drift_from, covariate_shift=covariate_shift, concept_shift=concept_shift,
                       features=features, target=TARGETS[kind], ground_truth=_GROUND_TRUTH[kind])
    (root / "_dataset.json").write_text(json.dumps(msgspec.to_builtins(info), indent=2) + "\n")
    return paths
