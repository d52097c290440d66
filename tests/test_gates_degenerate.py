"""Degenerate data never passes the gates: a holdout with one class or too few rows of a class, a
constant target under an r2 gate, predictions that are not finite, a window too small to train on or to
judge with, a binary target with one class. Each is a failed build with a one-line reason naming the
cause, and nothing is promoted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferloop.policy import parse_policy
from inferloop.registry import Registry
from inferloop.trainer import metrics
from inferloop.trainer.data import holdout_split
from inferloop.trainer.gates import ComparedModel, evaluate

from .trainer_support import make_data, policy_dict, run_cli, write_policy

TRAINING = "training:\n  data: {source: d, latest: 1}\n  features: [a]\n  target: y\n  kind: %s\n"


# -- the reasons, as pure functions ---------------------------------------------------------------
@pytest.mark.parametrize(("y", "expected"), [
    (np.ones(114), "holdout has only class 1 (114 rows): F1/accuracy/AUC are not meaningful on one class"),
    (np.zeros(40), "holdout has only class 0 (40 rows): F1/accuracy/AUC are not meaningful on one class"),
    (np.r_[np.ones(3), np.zeros(97)], "holdout has 3 row(s) of class 1 of 100: F1/accuracy/AUC need at least 5 "
                                      "of each class"),
    (np.r_[np.ones(96), np.zeros(4)], "holdout has 4 row(s) of class 0 of 100"),
])
def test_binary_holdout_problems_name_the_cause(y: np.ndarray, expected: str) -> None:
    problems = metrics.holdout_problems("binary", y)
    assert set(problems) == {"f1", "accuracy", "auc"}
    assert all(expected in why for why in problems.values()), problems


def test_a_usable_holdout_has_no_problems() -> None:
    assert metrics.holdout_problems("binary", np.r_[np.ones(5), np.zeros(5)]) == {}
    assert metrics.holdout_problems("regression", np.arange(30.0)) == {}
    # a constant target leaves rmse/mae meaningful; only r2 is undefined
    assert metrics.holdout_problems("regression", np.full(30, 2.5)) == {
        "r2": "holdout target is constant (2.5 in all 30 rows): r2 is not defined"}


def test_non_finite_predictions_make_every_metric_missing_and_say_why() -> None:
    pred = np.array([0.2, np.nan, 0.9, np.inf])
    assert metrics.compute("binary", np.array([0, 1, 1, 0]), pred) == {"f1": None, "accuracy": None, "auc": None}
    assert metrics.prediction_problem(pred) == "the model predicts NaN or infinity on 2 of 4 holdout rows"
    assert metrics.prediction_problem(np.zeros(3)) is None


@pytest.mark.parametrize("reference", [ComparedModel("production", None), ComparedModel("production", 4, {"f1": 0.5})])
def test_a_holdout_problem_fails_both_gates_with_its_reason(reference: ComparedModel) -> None:
    policy = parse_policy(TRAINING % "binary" + "validation:\n  min_f1: 0.6\n  compare_to: production\n",
                          "t.yaml", "m").validation
    assert policy is not None
    why = "holdout has only class 1 (114 rows): F1/accuracy/AUC are not meaningful on one class"
    # f1 = 1.0 would pass both gates on its own: the reason, not the number, decides
    record = evaluate(policy, {"f1": 1.0}, reference, "h" * 64, {"f1": why})
    assert not record.passed
    assert [(c.gate, c.passed) for c in record.checks] == [("absolute", False), ("relative", False)]
    assert all(why in c.detail for c in record.checks), [c.detail for c in record.checks]
    assert record.checks[0].detail.startswith("min_f1: holdout has only class 1")


def test_a_problem_with_another_metric_does_not_fail_the_gated_one() -> None:
    policy = parse_policy(TRAINING % "regression" + "validation:\n  max_rmse: 10\n", "t.yaml", "m").validation
    assert policy is not None
    assert evaluate(policy, {"rmse": 3.0, "r2": None}, None, "", {"r2": "constant"}).passed


# -- end to end: `inferloop train` -----------------------------------------------------------------
def _binary_window(tmp_path: Path, labels: np.ndarray | None = None, rows: int = 250) -> Path:
    """One classification partition (`rows` rows) whose target is replaced by `labels`."""
    data = make_data(tmp_path, "classification", days=1, rows_per_day=rows)
    policy = policy_dict(data, kind="classification")
    policy["training"]["data"]["latest"] = 1
    if labels is not None:
        path = next(data.glob("*.parquet"))
        table = pq.read_table(path)
        index = table.column_names.index("churned")
        pq.write_table(table.set_column(index, "churned", pa.array(labels.astype(np.int64))), path)
    return write_policy(tmp_path / "churn.yaml", policy)


def _train(capsys, tmp_path: Path, policy: Path) -> tuple[int, str, str, str]:
    uri = f"file://{tmp_path / 'registry'}"
    code, out, err = run_cli(capsys, "train", "--policy", str(policy), "--registry", uri)
    return code, out, err, uri


def _holdout_rows(rows: int = 250) -> np.ndarray:
    _, hold = holdout_split(rows, 0.2, seed=3)  # policy_dict: seed 3, holdout_fraction 0.2
    return hold


@pytest.mark.parametrize("label", [1, 0])
def test_a_target_with_one_class_is_refused_before_training(tmp_path: Path, capsys, label: int) -> None:
    policy = _binary_window(tmp_path, np.full(250, label))
    code, out, err, uri = _train(capsys, tmp_path, policy)
    assert code == 2 and out == ""
    assert err.strip() == (f"inferloop: error: binary target 'churned' is {label} in all 200 training rows: "
                           "a classifier needs both classes to learn from")
    assert "epoch" not in err
    with Registry.open(uri) as reg:
        assert reg.list_models() == []


@pytest.mark.parametrize(("positives_held_out", "reason"), [
    (0, "holdout has only class 0 (50 rows): F1/accuracy/AUC are not meaningful on one class"),
    (3, "holdout has 3 row(s) of class 1 of 50: F1/accuracy/AUC need at least 5 of each class"),
])
def test_a_degenerate_holdout_fails_the_gates_and_is_never_promoted(tmp_path: Path, capsys, positives_held_out: int,
                                                                  reason: str) -> None:
    labels = np.zeros(250)
    labels[::2] = 1  # both classes to learn from
    hold = _holdout_rows()
    labels[hold] = 0
    labels[hold[:positives_held_out]] = 1
    code, out, err, uri = _train(capsys, tmp_path, _binary_window(tmp_path, labels))
    assert code == 1, err
    assert "gates     FAILED" in out and f"FAIL min_f1: {reason}" in out
    assert "f1=missing  accuracy=missing  auc=missing" in out  # not recorded as if meaningful
    assert "promoted" not in out
    with Registry.open(uri) as reg:
        assert reg.get_pointer("rev", "staging") is None
        manifest = reg.get_manifest("rev", 1)
        (event,) = reg.history("rev", kinds={"gate_failed"})
    assert manifest.validation is not None and not manifest.validation.passed
    assert "f1" not in manifest.metrics
    assert any(reason in c["detail"] for c in event.details["checks"])


@pytest.mark.parametrize(("rows", "expected"), [
    (2, "the data window has 2 row(s): 1 to train on and 1 held out (training.holdout_fraction 0.2); "
        "at least 20 training and 20 holdout rows are needed: widen the window"),
    (60, "the data window has 60 row(s): 48 to train on and 12 held out"),
])
def test_a_window_too_small_to_train_or_judge_is_refused(tmp_path: Path, capsys, rows: int, expected: str) -> None:
    labels = np.arange(rows) % 2
    code, out, err, uri = _train(capsys, tmp_path, _binary_window(tmp_path, labels, rows=rows))
    assert code == 2 and out == ""
    assert err.startswith(f"inferloop: error: {expected}") and err.count("\n") == 1, err
    with Registry.open(uri) as reg:
        assert reg.list_models() == []


def test_a_usable_holdout_still_passes(tmp_path: Path, capsys) -> None:
    code, out, err, uri = _train(capsys, tmp_path, _binary_window(tmp_path, rows=1000))
    assert code == 0, out + err
    assert "gates     PASSED" in out and "promoted  staging" in out
