"""Holdout metrics against independent computations, and the gate matrix: absolute fail, relative
fail, within tolerance, no production yet, missing metric, both metric directions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from inferloop.policy import parse_policy
from inferloop.trainer import metrics
from inferloop.trainer.gates import ComparedModel, evaluate


def test_regression_metrics() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 2.0, 2.0, 5.0])
    m = metrics.regression_metrics(y, pred)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["r2"] == pytest.approx(1 - 2.25 / 5.0)
    assert metrics.regression_metrics(np.ones(3), np.ones(3))["r2"] is None  # constant target: undefined


def test_binary_metrics_and_auc_match_mann_whitney() -> None:
    y = np.array([1, 1, 0, 0, 1, 0])
    prob = np.array([0.9, 0.4, 0.6, 0.1, 0.7, 0.2])
    m = metrics.binary_metrics(y, prob)
    # predicted positive: 0.9, 0.6, 0.7 -> tp 2, fp 1, fn 1
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["accuracy"] == pytest.approx(4 / 6)
    rng = np.random.default_rng(3)
    y = rng.random(2000) < 0.3
    score = np.round(rng.random(2000) + 0.4 * y, 2)  # many ties
    u = stats.mannwhitneyu(score[y], score[~y]).statistic
    assert metrics.auc(y, score) == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)


def test_undefined_binary_metrics_are_missing() -> None:
    m = metrics.binary_metrics(np.zeros(5), np.full(5, 0.1))
    assert m["auc"] is None and m["f1"] is None and m["accuracy"] == 1.0


VALIDATION_F1 = "validation:\n  min_f1: 0.88\n  compare_to: production\n  tolerance: -0.005\n"
VALIDATION_RMSE = "validation:\n  max_rmse: 40\n  compare_to: production\n  tolerance: -1.0\n"
TRAINING = "training:\n  data: {source: d, latest: 1}\n  features: [a]\n  target: y\n  kind: %s\n"


def _validation(kind: str, text: str):
    policy = parse_policy(TRAINING % kind + text, "t.yaml", "m")
    assert policy.validation is not None
    return policy.validation


def _prod(value: float | None, metric: str) -> ComparedModel:
    return ComparedModel("production", 4, {metric: value})


NO_PRODUCTION = ComparedModel("production", None)


@pytest.mark.parametrize(("case", "kind", "text", "candidate", "reference", "absolute", "relative"), [
    # higher is better (f1), tolerance -0.005
    ("pass both", "binary", VALIDATION_F1, 0.93, _prod(0.92, "f1"), True, True),
    ("absolute fail", "binary", VALIDATION_F1, 0.85, _prod(0.80, "f1"), False, True),
    ("relative fail", "binary", VALIDATION_F1, 0.90, _prod(0.92, "f1"), True, False),
    ("within tolerance", "binary", VALIDATION_F1, 0.917, _prod(0.92, "f1"), True, True),
    ("just beyond tolerance", "binary", VALIDATION_F1, 0.914, _prod(0.92, "f1"), True, False),
    ("no production yet", "binary", VALIDATION_F1, 0.90, NO_PRODUCTION, True, True),
    ("missing candidate metric", "binary", VALIDATION_F1, None, _prod(0.92, "f1"), False, False),
    ("missing production metric", "binary", VALIDATION_F1, 0.93, _prod(None, "f1"), True, False),
    ("production not evaluable", "binary", VALIDATION_F1, 0.93,
     ComparedModel("production", 4, error="it takes features ['z']"), True, False),
    # lower is better (rmse), tolerance -1.0: candidate may be up to 1.0 worse
    ("rmse better", "regression", VALIDATION_RMSE, 30.0, _prod(31.0, "rmse"), True, True),
    ("rmse within tolerance", "regression", VALIDATION_RMSE, 31.5, _prod(31.0, "rmse"), True, True),
    ("rmse relative fail", "regression", VALIDATION_RMSE, 32.5, _prod(31.0, "rmse"), True, False),
    ("rmse absolute fail", "regression", VALIDATION_RMSE, 41.0, _prod(45.0, "rmse"), False, True),
    ("rmse exactly at tolerance", "regression", VALIDATION_RMSE, 32.0, _prod(31.0, "rmse"), True, True),
    # a positive tolerance demands a real improvement
    ("positive tolerance unmet", "regression", VALIDATION_RMSE.replace("-1.0", "0.5"), 30.75,
     _prod(31.0, "rmse"), True, False),
    ("positive tolerance met", "regression", VALIDATION_RMSE.replace("-1.0", "0.5"), 30.5,
     _prod(31.0, "rmse"), True, True),
])
def test_gate_matrix(case: str, kind: str, text: str, candidate: float | None, reference: ComparedModel,
                     absolute: bool, relative: bool) -> None:
    policy = _validation(kind, text)
    metric = policy.gated_metrics()[0]
    record = evaluate(policy, {metric: candidate}, reference, "h" * 64)
    (abs_check,) = [c for c in record.checks if c.gate == "absolute"]
    (rel_check,) = [c for c in record.checks if c.gate == "relative"]
    assert (abs_check.passed, rel_check.passed) == (absolute, relative), rel_check.detail
    assert record.passed == (absolute and relative)
    assert record.holdout_digest == "h" * 64 and record.tolerance == policy.tolerance
    assert rel_check.candidate == candidate and abs_check.candidate == candidate
    if reference.version is None:
        assert "no production version yet" in rel_check.detail
    else:
        assert rel_check.production_version == 4
        assert rel_check.production == reference.metrics.get(metric)


def test_relative_threshold_records_the_value_the_candidate_had_to_reach() -> None:
    f1 = evaluate(_validation("binary", VALIDATION_F1), {"f1": 0.9}, _prod(0.92, "f1"), "")
    assert f1.checks[1].threshold == pytest.approx(0.915)  # 0.92 + (-0.005), higher is better
    rmse = evaluate(_validation("regression", VALIDATION_RMSE), {"rmse": 30.0}, _prod(31.0, "rmse"), "")
    assert rmse.checks[1].threshold == pytest.approx(32.0)  # 31.0 - (-1.0), lower is better


def test_without_compare_to_only_the_absolute_gate_runs() -> None:
    policy = _validation("binary", "validation:\n  min_f1: 0.5\n  max_f1: 0.99\n")
    record = evaluate(policy, {"f1": 0.995}, None, "")
    assert [c.gate for c in record.checks] == ["absolute", "absolute"]
    assert [c.passed for c in record.checks] == [True, False] and not record.passed
