"""Holdout metrics, in numpy. A metric that is undefined on the data (AUC with one class, R² of a
constant target, F1 with no positives at all) is None: a gate on it fails ("missing metric")."""

from __future__ import annotations

import numpy as np

from inferloop.policy import METRICS, Direction, Kind

THRESHOLD = 0.5  # binary decision threshold on the predicted probability


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
    """Every metric of `kind`; `pred` is the prediction (regression) or the probability (binary)."""
    return regression_metrics(y, pred) if kind == "regression" else binary_metrics(y, pred)
