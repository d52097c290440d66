"""Holdout metrics, in numpy. A metric that is undefined on the data (AUC with one class, R² of a
constant target, F1 with no positives at all) or on predictions that are not finite is None: a gate
on it fails ("missing metric"). `holdout_problems` names, per metric, why a holdout cannot judge a
model with it (one class, too few rows of a class, a constant target), before any number is trusted.
"""

from __future__ import annotations

import numpy as np

from inferloop.policy import METRICS, Direction, Kind

THRESHOLD = 0.5  # binary decision threshold on the predicted probability
# Holdout rows of each class a binary metric needs: with fewer, F1/AUC/accuracy move by a large step
# per row, and a constant model scores well on a holdout that is nearly all one class.
MIN_CLASS_ROWS = 5


_DIRECTIONS: dict[str, Direction] = {m: d for metrics in METRICS.values() for m, d in metrics.items()}


def direction(metric: str) -> Direction:
    return _DIRECTIONS[metric]  # KeyError for a metric no kind defines


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    err = pred - y
    sst = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - float(np.sum(err**2)) / sst if sst > 0 else None,
    }


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting half
    (the Mann-Whitney U statistic from average ranks)."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = np.asarray(score, np.float64)[order]
    ranks = np.empty(len(order), np.float64)
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(order)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def binary_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float | None]:
    truth = np.asarray(y) > 0.5
    pred = np.asarray(prob) >= THRESHOLD
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else None,
        "accuracy": float(np.mean(pred == truth)),
        "auc": auc(truth, prob),
    }


def compute(kind: Kind, y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """Every metric of `kind`; `pred` is the prediction (regression) or the probability (binary).
    All None when a prediction is NaN or infinite (`prediction_problem` says how many)."""
    if prediction_problem(pred) is not None:
        return dict.fromkeys(METRICS[kind])
    return regression_metrics(y, pred) if kind == "regression" else binary_metrics(y, pred)


def prediction_problem(pred: np.ndarray) -> str | None:
    bad = int(np.count_nonzero(~np.isfinite(np.asarray(pred, np.float64))))
    return f"the model predicts NaN or infinity on {bad} of {len(pred)} holdout rows" if bad else None


def holdout_problems(kind: Kind, y: np.ndarray) -> dict[str, str]:
    """metric -> one line saying why this holdout cannot judge a model with it (absent: it can)."""
    y = np.asarray(y, np.float64)
    rows = len(y)
    if kind == "binary":
        positives = int(np.count_nonzero(y > 0.5))
        counts = {0: rows - positives, 1: positives}
        rare = min(counts, key=lambda c: counts[c])
        names = "/".join(m.upper() if m != "accuracy" else m for m in METRICS["binary"])
        if counts[rare] == 0:
            why = f"holdout has only class {1 - rare} ({rows} rows): {names} are not meaningful on one class"
        elif counts[rare] < MIN_CLASS_ROWS:
            why = (f"holdout has {counts[rare]} row(s) of class {rare} of {rows}: {names} need at least "
                   f"{MIN_CLASS_ROWS} of each class")
        else:
            return {}
        return dict.fromkeys(METRICS["binary"], why)
    if rows and np.all(y == y[0]):
        return {"r2": f"holdout target is constant ({y[0]:g} in all {rows} rows): r2 is not defined"}
    return {}
