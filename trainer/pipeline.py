"""One build: data window → training → holdout metrics → two gates → register → promote → notify.

`plan` (in the invoking process) checks that the registry is reachable and resolves the policy's
window to exact partitions before any compute is spent; `execute` (in-process, or on every rank under
torchrun) trains, and its main rank evaluates, gates, registers and promotes. `--reproduce` runs the
same `execute` from a manifest and compares instead of registering.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal

import msgspec
import numpy as np

from inferloop.policy import ALL_METRICS, BUILTIN_ENTRYPOINT, Policy, ValidationPolicy
from inferloop.registry import Conflict, Registry, RegistryError
from inferloop.registry.lineage import capture_code, packages_digest
from inferloop.registry.manifest import EntrypointLineage, InputSignature, ValidationRecord, VersionManifest
from inferloop.trainer import entrypoint, gates, metrics, model_inputs, notify
from inferloop.trainer.context import TrainingContext, TrainResult
from inferloop.trainer.data import (
    Dataset,
    holdout_digest,
    load_dataset,
    resolve_window,
    training_split,
)
from inferloop.trainer.entrypoint import EntrypointError
from inferloop.trainer.errors import TrainerError
from inferloop.trainer.fit import DistInfo, MLPParams, Progress, deterministic, resolve_device
from inferloop.trainer.partition_source import open_source
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
    metrics: dict[str, float | None] = {}  # on the holdout, through the packaged artifact (what the gates judge)
    training_metrics: dict[str, float] = {}  # what the entrypoint logged or returned
    entrypoint: str = ""
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
    # wall seconds per phase on the main rank: load, train (the entrypoint), package (export + open),
    # holdout (run through the artifact + metrics), gate (the compared stage's run), register
    phases: dict[str, float] = {}
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
         actor: str = "trainer", reason: str = "", trigger: str = "cli", job_id: str | None = None,
         policy_path: str | None = None) -> BuildRequest:
    """Check the registry answers, the entrypoint imports and pin the data window, before any training.
    `policy_path`: the policy file, whose project the entrypoint may be imported from."""
    Registry.open(registry_uri, s3_endpoint=s3_endpoint).close()
    root = entrypoint.project_root(policy_path) if policy_path is not None else None
    entrypoint.load(policy.training.entrypoint, root)
    uri, names = resolve_window(policy.training.data, data, s3_endpoint)
    return BuildRequest(spec=TrainSpec.from_policy(policy, uri, names, root), registry=registry_uri,
                        s3_endpoint=s3_endpoint, validation=policy.validation, actor=actor, reason=reason,
                        trigger=trigger, job_id=job_id)


def plan_reproduce(name: str, version: int | str, registry_uri: str, *, s3_endpoint: str | None = None,
                   data: str | None = None) -> BuildRequest:
    with Registry.open(registry_uri, s3_endpoint=s3_endpoint, create=False) as reg:  # registers nothing
        manifest = reg.get_manifest(name, version)
    spec = TrainSpec.from_manifest(manifest)
    if data is not None:  # the same partitions moved elsewhere: their digests are still checked
        with open_source(data, s3_endpoint) as moved:
            spec = msgspec.structs.replace(spec, data_uri=moved.uri)
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


class Candidate(msgspec.Struct):
    """The trained model as it will be served: packaged once, opened once, judged on the holdout."""

    packaged: Any  # registry.packaging.PackagedModel
    signature: InputSignature
    runnable: Any  # registry.runnable.Runnable over `packaged.data`
    plan: model_inputs.InputPlan
    result: TrainResult


def execute(request: BuildRequest, dist: DistInfo = SINGLE_PROCESS, progress: Progress = stderr_progress,
            ) -> BuildSummary | None:
    """Train on every rank; the main rank finishes the build (or the comparison) and returns its summary."""
    spec = request.spec
    fn = entrypoint.load(spec.entrypoint, spec.root)
    code = entrypoint.lineage(spec.entrypoint, fn, spec.root) if dist.is_main else None
    warnings: list[str] = []
    if request.reproduce is not None and dist.is_main:
        assert code is not None
        warnings = environment_warnings(request.reproduce) + _check_same_code(request.reproduce, code)
    for w in warnings:
        progress(f"warning: {w}")
    clock = time.perf_counter()
    data = load_dataset(spec.data_uri, spec.partitions, spec.features, spec.target, spec.kind,
                        expected=request.reproduce.lineage.data if request.reproduce is not None else None,
                        s3_endpoint=request.s3_endpoint)
    train_idx, hold_idx = training_split(data.y, spec.holdout_fraction, spec.seed, spec.kind, spec.target)
    device = resolve_device(spec.device, dist)
    if dist.is_main:
        first, last = spec.partitions[0], spec.partitions[-1]
        progress(f"{spec.model}: {len(spec.partitions)} partition(s) {first}…{last}, {len(data.y)} rows "
                 f"({len(train_idx)} train / {len(hold_idx)} holdout), data digest {data.lineage.digest[:12]}…, "
                 f"{dist.world_size} process(es) on {device}, entrypoint {spec.entrypoint}")
    train_table, x_train = data.table.take(train_idx), data.x[train_idx]
    phases = {"load": time.perf_counter() - clock}
    with deterministic(spec.threads):
        seed_everything(spec.seed)
        ctx = TrainingContext(model_name=spec.model, data=train_table, x=x_train, y=data.y[train_idx],
                              features=spec.features, target=spec.target, kind=spec.kind, params=dict(spec.params),
                              seed=spec.seed, device=device, rank=dist.rank, world_size=dist.world_size,
                              local_rank=dist.local_rank, progress=progress)
        started = time.perf_counter()
        returned = entrypoint.call(fn, ctx, spec.entrypoint)
        seconds = time.perf_counter() - started
        if not dist.is_main:
            return None
        phases["train"] = seconds
        clock = time.perf_counter()
        result = _as_result(returned, spec.entrypoint)
        candidate = _package(result, spec, train_table, x_train)
        phases["package"] = time.perf_counter() - clock
        clock = time.perf_counter()
        hold_table, x_hold, y_hold = data.table.take(hold_idx), data.x[hold_idx], data.y[hold_idx]
        hold_inputs = _holdout_inputs(candidate.packaged, candidate.plan, hold_table, x_hold, spec.entrypoint)
        pred = _predict(candidate.runnable, candidate.signature, candidate.plan, hold_inputs, spec.kind)
    computed = metrics.compute(spec.kind, y_hold, pred)
    problems = metrics.holdout_problems(spec.kind, y_hold)
    phases["holdout"] = time.perf_counter() - clock
    # a number the holdout cannot support is not recorded as the version's metric
    candidate_metrics = {k: None if k in problems else v for k, v in computed.items()}
    training_metrics = _training_metrics({**ctx.metrics, **result.metrics})
    epochs = _epochs(spec)
    summary = BuildSummary(
        model=spec.model, mode="build" if request.reproduce is None else "reproduce", exit_code=EXIT_OK,
        metrics=candidate_metrics, training_metrics=training_metrics, entrypoint=spec.entrypoint,
        data_uri=data.lineage.uri, data_digest=data.lineage.digest, partitions=list(spec.partitions),
        rows_train=len(train_idx), rows_holdout=len(hold_idx), world_size=dist.world_size,
        device=device.split(":")[0], epochs=epochs, final_loss=training_metrics.get("train_loss"),
        train_seconds=seconds, rows_per_second=len(train_idx) * max(epochs, 1) / max(seconds, 1e-9),
        warnings=warnings, phases=phases,
    )
    if request.reproduce is not None:
        return _compare(request.reproduce, candidate, summary)
    assert code is not None
    return _finish_build(request, data, candidate, code, (train_table, x_train), (hold_table, x_hold, y_hold),
                         summary, progress, problems)


def seed_everything(seed: int) -> None:
    """The policy's seed in Python's, numpy's and torch's global generators, before the user's code runs."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_same_code(manifest: VersionManifest, code: EntrypointLineage) -> list[str]:
    """Refuse a rebuild by other code (it would compare nothing); a changed package is only a warning."""
    recorded = manifest.lineage.entrypoint
    if recorded is None:
        return []  # built before entrypoints were recorded: the built-in MLP, checked by digest alone
    where = f"{manifest.name} v{manifest.version}"
    if recorded.entrypoint != code.entrypoint:
        raise TrainerError(f"cannot reproduce {where}: it was built by {recorded.entrypoint}, the entrypoint "
                           f"found is {code.entrypoint}")
    if recorded.module_digest != code.module_digest:
        raise TrainerError(f"cannot reproduce {where}: the entrypoint's source {code.module_file} changed since "
                           f"the version was built (digest {code.module_digest[:12]}…, recorded "
                           f"{recorded.module_digest[:12]}… from {recorded.module_file})")
    if recorded.package_digest != code.package_digest:
        return [f"the package around {code.module_file} changed since the version was built"]
    return []


def _as_result(returned: Any, name: str) -> TrainResult:
    if isinstance(returned, TrainResult):
        result = returned
    else:
        result = TrainResult(returned)
    model = result.model
    if _is_torch_module(model):
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(model, DistributedDataParallel):
            model = model.module
        model = model.to("cpu").eval()  # exported as served: on the CPU, in inference mode (dropout off)
    elif not (isinstance(model, bytes | bytearray) or type(model).__name__ == "ModelProto"):
        raise EntrypointError(f"training.entrypoint {name!r} returned a {type(model).__name__}: return a "
                              "torch.nn.Module, an ONNX model (onnx.ModelProto) or a TrainResult")
    for key, value in result.metrics.items():
        if not isinstance(value, int | float) or not np.isfinite(value):
            raise EntrypointError(f"training.entrypoint {name!r} returned metric {key!r} = {value!r}: metrics "
                                  "must be finite numbers")
    if not all(isinstance(t, str) for t in result.tags):
        raise EntrypointError(f"training.entrypoint {name!r} returned tags that are not strings: {result.tags!r}")
    return msgspec.structs.replace(result, model=model)


def _is_torch_module(model: Any) -> bool:
    import torch

    return isinstance(model, torch.nn.Module)


def _package(result: TrainResult, spec: TrainSpec, train_table: Any, x_train: np.ndarray) -> Candidate:
    from inferloop.registry.errors import UnsupportedArtifact
    from inferloop.registry.packaging import package_model
    from inferloop.registry.runnable import open_runnable

    plan_ = model_inputs.plan(result.inputs, spec.features, result.model, result.prediction_output)
    examples = model_inputs.arrays(plan_, train_table.slice(0, 8), x_train[:8])
    try:
        packaged = package_model(result.model, examples)
        columns = plan_.inputs[0].columns if len(plan_.inputs) == 1 and not plan_.inputs[0].flat else None
        signature = packaged.signature(spec.features if not plan_.inputs else columns, spec.kind, None)
        runnable = open_runnable(packaged.data, packaged.info("", len(packaged.data)), signature)
    except (UnsupportedArtifact, ValueError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainerError(f"the model returned by {spec.entrypoint} cannot be packaged for serving on the "
                           f"features ({_describe_inputs(plan_, spec)}): {first}") from exc
    return Candidate(packaged, signature, runnable, plan_, result)


def _describe_inputs(plan_: model_inputs.InputPlan, spec: TrainSpec) -> str:
    if not plan_.inputs:
        return f"one FP32 input of {len(spec.features)} columns"
    return ", ".join(f"{i.name}: {i.columns[0] if i.flat else f'{len(i.columns)} columns'}" for i in plan_.inputs)


def _holdout_inputs(packaged: Any, plan_: model_inputs.InputPlan, table: Any, x: np.ndarray,
                    name: str) -> list[np.ndarray]:
    try:
        arrays: list[np.ndarray] = packaged.arrays(model_inputs.arrays(plan_, table, x))
    except ValueError as exc:
        raise TrainerError(f"the model returned by {name} does not take the holdout rows: {exc}") from None
    return arrays


def _predict(runnable: Any, signature: InputSignature, plan_: model_inputs.InputPlan, inputs: list[np.ndarray],
             kind: str) -> np.ndarray:
    index = model_inputs.output_index(plan_, signature)
    output = signature.tensor_outputs()[index].name
    try:
        return model_inputs.predictions(runnable, inputs, index, kind, output)
    except TrainerError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/onnxruntime raise many kinds: the artifact cannot run them
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainerError(f"the packaged model fails on the holdout rows: {first}") from exc


def _training_metrics(values: dict[str, float]) -> dict[str, float]:
    taken = sorted(set(values) & set(ALL_METRICS))
    if taken:
        raise TrainerError(f"training metric(s) {', '.join(taken)}: the trainer computes these on the holdout "
                           "for the gates; log yours under another name (e.g. train_" + taken[0] + ")")
    return {k: float(v) for k, v in values.items()}


def _epochs(spec: TrainSpec) -> int:
    """Epochs the run made, when its parameters say (the built-in MLP's, or an `epochs` param)."""
    if spec.entrypoint == BUILTIN_ENTRYPOINT:
        return int(spec.params.get("epochs", MLPParams().epochs))
    value = spec.params.get("epochs")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _compare(manifest: VersionManifest, candidate: Candidate, summary: BuildSummary) -> BuildSummary:
    from inferloop.registry.core import sha256

    summary.digest = sha256(candidate.packaged.data)  # the digest the registry gives an artifact it stores
    summary.reproduced_version = manifest.version
    summary.expected_digest = manifest.artifact.digest
    summary.digest_matches = summary.digest == manifest.artifact.digest
    summary.metric_diffs = {
        k: (v - manifest.metrics[k]) if v is not None and k in manifest.metrics else None
        for k, v in summary.metrics.items()
    }
    summary.exit_code = EXIT_OK if summary.digest_matches else EXIT_GATE_FAILED
    return summary


def _evaluate_stage(reg: Registry, spec: TrainSpec, stage: str, table: Any, y: np.ndarray) -> gates.ComparedModel:
    """The model in `stage`, run through its stored artifact on this run's holdout rows (never a metric
    from another data set)."""
    pointer = reg.get_pointer(spec.model, stage)
    if pointer is None or pointer.version is None:
        return gates.ComparedModel(stage, None)
    version = pointer.version
    try:
        manifest = reg.get_manifest(spec.model, version)
        if manifest.signature.output_kind != spec.kind:
            return gates.ComparedModel(stage, version, error=f"it is a {manifest.signature.output_kind} model")
        recorded = model_inputs.InputPlan.recorded(manifest)
        columns = [c for i in recorded.inputs for c in i.columns] or [f.name for f in manifest.signature.features]
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            return gates.ComparedModel(stage, version, error=f"it takes column(s) {missing} that this data window "
                                                             "does not have")
        from inferloop.registry.packaging import signature_arrays

        x = np.stack([np.asarray(table.column(c).to_numpy(), np.float32) for c in columns], axis=1)
        inputs = signature_arrays(manifest.signature.tensor_inputs(), model_inputs.arrays(recorded, table, x))
        runnable = reg.load_runnable(spec.model, version)
        pred = _predict(runnable, manifest.signature, recorded, inputs, spec.kind)
    except (RegistryError, TrainerError, ValueError) as exc:
        return gates.ComparedModel(stage, version, error=str(exc))
    return gates.ComparedModel(stage, version, metrics.compute(spec.kind, y, pred))


def _finish_build(request: BuildRequest, data: Dataset, candidate: Candidate, code: EntrypointLineage,
                  train: tuple[Any, np.ndarray], holdout: tuple[Any, np.ndarray, np.ndarray], summary: BuildSummary,
                  progress: Progress, problems: dict[str, str]) -> BuildSummary:
    """Gate 2 on the same holdout, then register the judged bytes with their lineage, promote, notify.
    `train` is (table, x) of the training rows, `holdout` (table, x, y) of the held-out ones."""
    spec, policy = request.spec, request.validation
    (train_table, x_train), (hold_table, x_hold, y_hold) = train, holdout
    clock = time.perf_counter()
    with Registry.open(request.registry, s3_endpoint=request.s3_endpoint) as reg:
        hdigest = holdout_digest(x_hold, y_hold, spec.features)
        reference = None
        if policy is not None and policy.compare_to is not None:
            reference = _evaluate_stage(reg, spec, policy.compare_to, hold_table, y_hold)
        record = gates.evaluate(policy, summary.metrics, reference, hdigest, problems) if policy is not None else None
        summary.phases["gate"] = time.perf_counter() - clock
        clock = time.perf_counter()
        production = reg.get_pointer(spec.model, "production")
        drift_reference = candidate.packaged.arrays(model_inputs.arrays(candidate.plan, train_table, x_train))
        with reg.track(spec.model, actor=request.actor) as run:
            run.seed = spec.seed
            run.world_size = summary.world_size
            run.device = summary.device
            run.entrypoint = code
            run.set_data(data.lineage)
            run.log_params({**spec.recorded_params(), **candidate.plan.params()})
            for name, value in {**summary.metrics, **summary.training_metrics}.items():
                if value is not None:
                    run.log_metric(name, value)
            version = run.register_packaged(
                candidate.packaged, candidate.signature, reference=drift_reference, runnable=candidate.runnable,
                tags=[f"trigger:{request.trigger}", *candidate.result.tags],
                parent=production.version if production else None, validation=record)
        assert run.manifest is not None
        summary.phases["register"] = time.perf_counter() - clock
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
            if policy.promote_on_pass == "shadow" and production is None:
                # shadow compares a candidate with production on live traffic: with no production
                # version there is nothing to compare, and the gateway would mirror the version to
                # itself once it is promoted. The first version is deployed by a person.
                progress(f"not promoted to shadow: {spec.model} has no production version to compare v{version} "
                         f"with; deploy it with `inferloop registry promote {spec.model} {version} --stage "
                         "production`")
            elif policy.promote_on_pass is not None:
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
