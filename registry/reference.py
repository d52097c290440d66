"""Reference statistics for drift: fixed quantile bins of the training data.

Bins are open at both ends: value bin i holds x with edges[i-1] <= x < edges[i]; the last slot
counts missing (NaN) values. Counting is vectorised (`searchsorted` + `bincount`), per batch.
`reference_stats` (what registration stores) also warns when the reference is too small for the
drift monitor's default threshold to apply (`drift_power.warn_if_underpowered`).
"""

from __future__ import annotations

import numpy as np

from inferloop.registry.drift_power import warn_if_underpowered
from inferloop.registry.manifest import BinnedReference, ReferenceStats

DEFAULT_BINS = 10


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    qs = np.quantile(finite.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    return [float(e) for e in np.unique(qs)]


def count_bins(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts of `values` (1-D) in the bins of `edges`, plus a last slot for NaN: len(edges) + 2."""
    nbins = len(edges) + 1
    missing = np.isnan(values)
    idx = np.searchsorted(edges, values, side="right")
    idx[missing] = nbins
    return np.bincount(idx, minlength=nbins + 1)


def bin_reference(name: str, values: np.ndarray, bins: int = DEFAULT_BINS) -> BinnedReference:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    edges = quantile_edges(values, bins)
    counts = count_bins(np.asarray(edges), values)
    total = max(int(values.size), 1)
    return BinnedReference(name=name, edges=edges, fractions=[float(c) / total for c in counts],
                           count=int(values.size))


def reference_stats(x: np.ndarray, feature_names: list[str], predictions: np.ndarray | None = None,
                    bins: int = DEFAULT_BINS) -> ReferenceStats:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"reference must be a 2-D array with {len(feature_names)} columns, got shape {x.shape}")
    feats = [bin_reference(n, x[:, i], bins) for i, n in enumerate(feature_names)]
    preds = None
    if predictions is not None:
        preds = bin_reference("prediction", np.asarray(predictions, dtype=np.float64).reshape(len(x), -1)[:, 0], bins)
    stats = ReferenceStats(features=feats, predictions=preds, sample_size=int(x.shape[0]))
    warn_if_underpowered(stats)
    return stats
