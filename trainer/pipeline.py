"""One build: data window → training → holdout metrics → two gates → register → promote → notify.

`plan` (in the invoking process) checks that the registry is reachable and resolves the policy's
window to exact partitions before any compute is spent; `execute` (in-process, or on every rank under
torchrun) trains, and its main rank evaluates, gates, registers and promotes. `--reproduce` runs the
same `execute` from a manifest and compares instead of registering.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import msgspec
import numpy as np

from inferloop.policy import Policy, ValidationPolicy
from inferloop.registry import Conflict, Registry, RegistryError
from inferloop.registry.lineage import capture_code, packages_digest
from inferloop.registry.manifest import ValidationRecord, VersionManifest
from inferloop.trainer import gates, metrics, notify
from inferloop.trainer.data import (
    Dataset,
    holdout_digest,
    load_dataset,
    resolve_window,
    source_dir,
    training_split,
)
from inferloop.trainer.errors import TrainerError
from inferloop.trainer.fit import DistInfo, Progress, deterministic, fit, predict, resolve_device
from inferloop.trainer.spec import TrainSpec

EXIT_OK, EXIT_GATE_FAILED, EXIT_ERROR = 0, 1, 2


class BuildRequest(msgspec.Struct, frozen=True):
    """Everything a (possibly remote) training process needs; serialised for torchrun workers."""

    spec: TrainSpec
    registry: str
    s3_endpoint: str | None = None
    validation: ValidationPolicy | None = None
    actor: str = "trainer"
    reason: str = ""
    trigger: str = "cli"
    job_id: str | None = None
    reproduce: VersionManifest | None = None  # set: rebuild this version and compare, register nothing


class BuildSummary(msgspec.Struct):
    """What `inferloop train --json` prints and the trainer service stores with a job."""

    model: str
    mode: Literal["build", "reproduce"]
    exit_code: int
    version: int | None = None
    created: bool = False
    digest: str = ""
    metrics: dict[str, float | None] = {}
    verdict: Literal["passed", "failed", "skipped"] = "skipped"
    validation: ValidationRecord | None = None
    promoted: str | None = None
    notifications: list[notify.NotifyResult] = []
    data_uri: str = ""
    data_digest: str = ""
    partitions: list[str] = []
    rows_train: int = 0
    rows_holdout: int = 0
    world_size: int = 1
    device: str = "cpu"
    epochs: int = 0
    final_loss: float | None = None
    train_seconds: float = 0.0
    rows_per_second: float = 0.0
    # --reproduce
    reproduced_version: int | None = None
    expected_digest: str | None = None
    digest_matches: bool | None = None
    metric_diffs: dict[str, float | None] = {}
    warnings: list[str] = []


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- planning (invoking process) ----------------------------------------------------------------
def plan(policy: Policy, registry_uri: str, *, s3_endpoint: str | None = None, data: str | None = None,
         actor: str = "trainer", reason: str = "", trigger: str = "cli", job_id: str | None = None) -> BuildRequest:
    """Check the registry answers and pin the data window, before any training."""
    Registry.open(registry_uri, s3_endpoint=s3_endpoint).close()
    uri, names = resolve_window(policy.training.data, data)
    return BuildRequest(spec=TrainSpec.from_policy(policy, uri, names), registry=registry_uri,
                        s3_endpoint=s3_endpoint, validation=policy.validation, actor=actor, reason=reason,
                        trigger=trigger, job_id=job_id)


def plan_reproduce(name: str, version: int | str, registry_uri: str, *, s3_endpoint: str | None = None,
                   data: str | None = None) -> BuildRequest:
    with Registry.open(registry_uri, s3_endpoint=s3_endpoint, create=False) as reg:  # registers nothing
        manifest = reg.get_manifest(name, version)
    spec = TrainSpec.from_manifest(manifest)
    if data is not None:  # the same partitions moved elsewhere: their digests are still checked
        spec = msgspec.structs.replace(spec, data_uri=f"file://{source_dir(data)}")
    return BuildRequest(spec=spec, registry=registry_uri, s3_endpoint=s3_endpoint, trigger="reproduce",
                        reproduce=manifest)


def environment_warnings(manifest: VersionManifest) -> list[str]:
    """Differences between the recorded build environment and this one that can change the bytes."""
    import platform

    import torch

    rec = manifest.lineage
    out = []
    code = capture_code()
    if code.commit != rec.code.commit:
        out.append(f"code commit differs: built at {rec.code.commit or 'unknown'}, now {code.commit or 'unknown'}")
    if rec.code.dirty:
        out.append("the version was built from a working tree with uncommitted changes")
    if code.dirty:
        out.append("the working tree has uncommitted changes")
    env = rec.environment
    if env.torch != str(torch.__version__):
        out.append(f"torch differs: built with {env.torch}, now {torch.__version__}")
    if env.python != platform.python_version():
        out.append(f"python differs: built with {env.python}, now {platform.python_version()}")
    if env.packages_digest != packages_digest():
        out.append("installed packages differ from the recorded environment (packages digest changed)")
    if env.device.startswith("cuda"):
        out.append("the version was trained on CUDA: bit-identical results are not guaranteed")
    return out


# -- execution (every rank) ---------------------------------------------------------------------
SINGLE_PROCESS = DistInfo()


def execute(request: BuildRequest, dist: DistInfo = SINGLE_PROCESS, progress: Progress = stderr_progress,
            ) -> BuildSummary | None:
    """Train on every rank; the main rank finishes the build (or the comparison) and returns its summary."""
    spec = request.spec
    warnings = environment_warnings(request.reproduce) if request.reproduce is not None and dist.is_main else []
    for w in warnings:
        progress(f"warning: {w}")
    data = load_dataset(spec.data_uri, spec.partitions, spec.features, spec.target, spec.kind,
                        expected=request.reproduce.lineage.data if request.reproduce is not None else None)
    train_idx, hold_idx = training_split(data.y, spec.holdout_fraction, spec.seed, spec.kind, spec.target)
    device = resolve_device(spec.device, dist)
    if dist.is_main:
        first, last = spec.partitions[0], spec.partitions[-1]
        progress(f"{spec.model}: {len(spec.partitions)} partition(s) {first}…{last}, {len(data.y)} rows "
                 f"({len(train_idx)} train / {len(hold_idx)} holdout), data digest {data.lineage.digest[:12]}…, "
                 f"{dist.world_size} process(es) on {device}")
    with deterministic(spec.threads):
        fitted = fit(spec, data.x[train_idx], data.y[train_idx], dist=dist, device=device, progress=progress)
        if not dist.is_main:
            return None
        x_hold, y_hold = data.x[hold_idx], data.y[hold_idx]
        pred = predict(fitted.model, x_hold, spec.kind)
        computed = metrics.compute(spec.kind, y_hold, pred)
        problems = metrics.holdout_problems(spec.kind, y_hold)
        if (bad := metrics.prediction_problem(pred)) is not None:
            problems = dict.fromkeys(computed, bad)
        # a number the holdout cannot support is not recorded as the version's metric
        candidate = {k: None if k in problems else v for k, v in computed.items()}
        summary = BuildSummary(
            model=spec.model, mode="build" if request.reproduce is None else "reproduce", exit_code=EXIT_OK,
            metrics=candidate, data_uri=data.lineage.uri, data_digest=data.lineage.digest,
            partitions=list(spec.partitions), rows_train=len(train_idx), rows_holdout=len(hold_idx),
            world_size=dist.world_size, device=device.split(":")[0], epochs=spec.epochs,
            final_loss=fitted.epoch_losses[-1], train_seconds=fitted.seconds,
            rows_per_second=fitted.rows_processed / max(fitted.seconds, 1e-9), warnings=warnings,
        )
        if request.reproduce is not None:
            return _compare(request.reproduce, fitted.model, summary)
        return _finish_build(request, data, train_idx, x_hold, y_hold, fitted.model, summary, progress, problems)


def _compare(manifest: VersionManifest, model: Any, summary: BuildSummary) -> BuildSummary:
    from inferloop.registry.artifact import save_module
    from inferloop.registry.core import sha256

    artifact, _ = save_module(model)
    summary.digest = sha256(artifact)  # the digest the registry gives an artifact it stores
    summary.reproduced_version = manifest.version
    summary.expected_digest = manifest.artifact.digest
    summary.digest_matches = summary.digest == manifest.artifact.digest
    summary.metric_diffs = {
        k: (v - manifest.metrics[k]) if v is not None and k in manifest.metrics else None
        for k, v in summary.metrics.items()
    }
    summary.exit_code = EXIT_OK if summary.digest_matches else EXIT_GATE_FAILED
    return summary


def _evaluate_stage(reg: Registry, spec: TrainSpec, stage: str, x: np.ndarray, y: np.ndarray) -> gates.ComparedModel:
    """The model in `stage`, evaluated on this run's holdout (never a metric from another data set)."""
    pointer = reg.get_pointer(spec.model, stage)
    if pointer is None or pointer.version is None:
        return gates.ComparedModel(stage, None)
    version = pointer.version
    try:
        manifest = reg.get_manifest(spec.model, version)
        names = [f.name for f in manifest.signature.features]
        if names != spec.features:
            return gates.ComparedModel(stage, version, error=f"it takes features {names}, the candidate {spec.features}")
        if manifest.signature.output_kind != spec.kind:
            return gates.ComparedModel(stage, version, error=f"it is a {manifest.signature.output_kind} model")
        model = reg.load_model(spec.model, version)
    except RegistryError as exc:
        return gates.ComparedModel(stage, version, error=str(exc))
    return gates.ComparedModel(stage, version, metrics.compute(spec.kind, y, predict(model, x, spec.kind)))


def _finish_build(request: BuildRequest, data: Dataset, train_idx: np.ndarray, x_hold: np.ndarray,
                  y_hold: np.ndarray, model: Any, summary: BuildSummary, progress: Progress,
                  problems: dict[str, str]) -> BuildSummary:
    spec, policy = request.spec, request.validation
    with Registry.open(request.registry, s3_endpoint=request.s3_endpoint) as reg:
        hdigest = holdout_digest(x_hold, y_hold, spec.features)
        reference = None
        if policy is not None and policy.compare_to is not None:
            reference = _evaluate_stage(reg, spec, policy.compare_to, x_hold, y_hold)
        record = gates.evaluate(policy, summary.metrics, reference, hdigest, problems) if policy is not None else None
        production = reg.get_pointer(spec.model, "production")
        x_train = data.x[train_idx]
        with reg.track(spec.model, actor=request.actor) as run:
            run.seed = spec.seed
            run.world_size = summary.world_size
            run.device = summary.device
            run.set_data(data.lineage)
            run.log_params(spec.params())
            for name, value in summary.metrics.items():
                if value is not None:
                    run.log_metric(name, value)
            version = run.register(model, example_inputs=x_train[:8], reference=x_train,
                                   feature_names=spec.features, output_kind=spec.kind,
                                   tags=[f"trigger:{request.trigger}"],
                                   parent=production.version if production else None, validation=record)
        assert run.manifest is not None
        summary.version, summary.created, summary.digest = version, run.created, run.manifest.artifact.digest
        progress(f"registered {spec.model} v{version}{'' if run.created else ' (identical build: existing version)'}"
                 f", artifact {summary.digest[:12]}…")
        if record is None or policy is None:
            return summary
        summary.validation = record
        summary.verdict = "passed" if record.passed else "failed"
        for check in record.checks:
            progress(f"gate {check.gate}: {'PASS' if check.passed else 'FAIL'}  {check.detail}")
        reg.append_event(spec.model, "gate_passed" if record.passed else "gate_failed", actor=request.actor,
                         reason=request.reason or f"{request.trigger} build", version=version, details={
                             "holdout_digest": hdigest, "checks": msgspec.to_builtins(record.checks),
                             "tolerance": policy.tolerance, "compared_stage": policy.compare_to,
                             "compared_version": reference.version if reference else None,
                             "candidate_metrics": summary.metrics, "trigger": request.trigger,
                             "job_id": request.job_id, "created": run.created,
                         })
        if record.passed:
            if policy.promote_on_pass is not None:
                summary.promoted = _promote(reg, request, version, policy.promote_on_pass, reference)
                progress(f"promoted {spec.model} v{version} to {summary.promoted}")
        else:
            summary.exit_code = EXIT_GATE_FAILED
            if policy.notify_on_fail:
                summary.notifications = _notify(request, record, summary, version)
                for n in summary.notifications:
                    progress(f"notify {n.target}: {'sent' if n.ok else 'FAILED: ' + n.detail}")
    return summary


def _promote(reg: Registry, request: BuildRequest, version: int, stage: str,
             reference: gates.ComparedModel | None) -> str:
    kwargs: dict[str, Any] = {}
    if reference is not None and reference.stage == stage:
        # gate 2 judged against the version in this stage: move it only if it is still that version
        kwargs["expected_version"] = reference.version
    try:
        reg.promote(request.spec.model, version, stage, actor=request.actor,
                    reason=f"gates passed ({request.reason or request.trigger})", **kwargs)
    except Conflict as exc:
        raise TrainerError(f"not promoted: {stage} moved while v{version} was being validated ({exc}); "
                           "run the build again to compare against the new version") from None
    return stage


def _notify(request: BuildRequest, record: ValidationRecord, summary: BuildSummary,
            version: int) -> list[notify.NotifyResult]:
    assert request.validation is not None
    failed = [c.detail for c in record.checks if not c.passed]
    text = (f"inferloop: {request.spec.model} v{version} failed validation "
            f"({request.reason or request.trigger}): " + "; ".join(failed))
    payload = {"event": "gate_failed", "model": request.spec.model, "version": version, "verdict": "failed",
               "reason": request.reason, "trigger": request.trigger, "job_id": request.job_id,
               "metrics": summary.metrics, "holdout_digest": record.holdout_digest,
               "checks": msgspec.to_builtins(record.checks)}
    return notify.send(request.validation.notify_on_fail, payload, text)
