"""The two validation gates, as a pure function of metrics (no I/O: easy to test exhaustively).

Gate 1, absolute: each `min_<metric>` needs candidate >= bound, each `max_<metric>` candidate <= bound.
Gate 2, relative (only with `compare_to`): for each gated metric,
    improvement = candidate - reference   if higher is better (r2, f1, accuracy, auc)
    improvement = reference - candidate   if lower is better (rmse, mae)
and the check passes iff improvement >= tolerance, in the metric's own units. The reference is the
model in the `compare_to` stage evaluated on the same holdout in the same run. No model in that
stage: gate 2 passes and says so. A metric that is missing (not computable) fails its check, and so
does a metric the holdout cannot judge (`problems`: one class, too few rows of a class, a constant
target, predictions that are not finite): every check on it fails with that reason, in both gates.
"""

from __future__ import annotations

from typing import TypedDict

import msgspec

from inferloop.policy import ValidationPolicy
from inferloop.registry.manifest import GateCheck, ValidationRecord
from inferloop.trainer.metrics import direction


class ComparedModel(msgspec.Struct, frozen=True):
    """What gate 2 compares against: the model in a stage, evaluated on this run's holdout."""

    stage: str
    version: int | None  # None: the stage is empty
    metrics: dict[str, float | None] = {}
    error: str | None = None  # it could not be evaluated (e.g. it takes other features)


class _Reference(TypedDict):
    """The GateCheck fields that describe the reference model of a relative check."""

    production: float | None
    production_version: int | None


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.6g}"


def absolute_checks(policy: ValidationPolicy, candidate: dict[str, float | None],
                    problems: dict[str, str] | None = None) -> list[GateCheck]:
    checks = []
    for key, bound, metric, value in policy.thresholds():
        got = candidate.get(metric)
        if problems and metric in problems:
            checks.append(GateCheck("absolute", metric, False, got, value, detail=f"{key}: {problems[metric]}"))
            continue
        if got is None:
            checks.append(GateCheck("absolute", metric, False, None, value,
                                    detail=f"{key}: {metric} is missing (not computable on the holdout)"))
            continue
        passed = got >= value if bound == "min" else got <= value
        sign = ">=" if bound == "min" else "<="
        checks.append(GateCheck("absolute", metric, passed, got, value,
                                detail=f"{key}: {metric} {_fmt(got)} {'' if passed else 'not '}{sign} {value:g}"))
    return checks


def relative_checks(policy: ValidationPolicy, candidate: dict[str, float | None],
                    reference: ComparedModel, problems: dict[str, str] | None = None) -> list[GateCheck]:
    tol = policy.tolerance
    checks = []
    for metric in policy.gated_metrics():
        got = candidate.get(metric)
        if problems and metric in problems:
            checks.append(GateCheck("relative", metric, False, got, production_version=reference.version,
                                    detail=f"{metric} vs {reference.stage}: {problems[metric]}"))
            continue
        if reference.version is None:
            checks.append(GateCheck("relative", metric, True, got, detail=(
                f"no {reference.stage} version yet: nothing to compare against, gate 2 passes")))
            continue
        ref = reference.metrics.get(metric)
        common: _Reference = {"production": ref, "production_version": reference.version}
        if reference.error is not None or ref is None or got is None:
            why = reference.error or (f"{metric} is missing for the "
                                      f"{'candidate' if got is None else f'{reference.stage} model'}")
            checks.append(GateCheck("relative", metric, False, got, **common,
                                    detail=f"cannot compare with {reference.stage} v{reference.version}: {why}"))
            continue
        higher = direction(metric) == "higher"
        improvement = got - ref if higher else ref - got
        passed = improvement >= tol
        bound = ref + tol if higher else ref - tol  # the value the candidate had to reach
        checks.append(GateCheck("relative", metric, passed, got, bound, **common, detail=(
            f"{metric} {_fmt(got)} vs {reference.stage} v{reference.version} {_fmt(ref)}: improvement "
            f"{improvement:+.6g} {'>=' if passed else '<'} tolerance {tol:+g} "
            f"({'higher' if higher else 'lower'} is better)")))
    return checks


def evaluate(policy: ValidationPolicy, candidate: dict[str, float | None], reference: ComparedModel | None,
             holdout_digest: str, problems: dict[str, str] | None = None) -> ValidationRecord:
    """Both gates; `reference` is None exactly when the policy has no `compare_to`; `problems` maps a
    metric to why the holdout (or the candidate's predictions) cannot judge with it."""
    checks = absolute_checks(policy, candidate, problems)
    if reference is not None:
        checks += relative_checks(policy, candidate, reference, problems)
    return ValidationRecord(passed=all(c.passed for c in checks), checks=checks, holdout_digest=holdout_digest,
                            tolerance=policy.tolerance)
