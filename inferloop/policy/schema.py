"""The per-model policy: one YAML file describing a model's whole loop (DESIGN.md "Trainer").

It is its own package (`inferloop.policy`) because both the trainer (`training:`, `validation:`) and
the gateway (`shadow:`, `monitor:`) read it, the gateway may not import the trainer, and the registry
must know nothing of training. Every section is a
frozen msgspec Struct with `forbid_unknown_fields=True`, so a misspelt key is an error that names the
key and the file, never a silently ignored setting. Keys are documented in docs/trainer.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from inferloop.registry.errors import InvalidName, RegistryError
from inferloop.registry.names import check_model_name

Kind = Literal["regression", "binary"]
Direction = Literal["higher", "lower"]

# Validation metrics per output kind and which way is better. The trainer computes exactly these.
METRICS: dict[str, dict[str, Direction]] = {
    "regression": {"rmse": "lower", "mae": "lower", "r2": "higher"},
    "binary": {"f1": "higher", "accuracy": "higher", "auc": "higher"},
}
ALL_METRICS = sorted({m for ms in METRICS.values() for m in ms})  # every metric the trainer computes


class PolicyError(RegistryError, ValueError):
    """A policy file that cannot be read or does not match the schema; the message names the file."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every policy section: unknown keys are errors (a typo must not silently do nothing)."""


def _require(ok: bool, message: str) -> None:
    # Raised inside __post_init__, msgspec reports it with the section's path (`- at $.training`).
    if not ok:
        raise ValueError(message)


def _finite(value: float, name: str) -> None:
    _require(math.isfinite(value), f"{name} must be a finite number, got {value}")


# -- training: ----------------------------------------------------------------------------------
class DataSource(_Section, frozen=True):
    """Where the day partitions are and which of them to train on: `latest: N` (the N newest
    partition files by name) or an explicit `partitions: [name, ...]`; exactly one of the two."""

    source: str  # a directory (relative to the working directory) or file:// URI of partition files
    latest: int | None = None
    partitions: list[str] | None = None

    def __post_init__(self) -> None:
        _require(bool(self.source.strip()), "data.source must not be empty")
        _require((self.latest is None) != (self.partitions is None),
                 "data needs exactly one of `latest: N` or `partitions: [...]`")
        if self.latest is not None:
            _require(self.latest >= 1, f"data.latest must be at least 1, got {self.latest}")
        if self.partitions is not None:
            _require(len(self.partitions) > 0, "data.partitions must name at least one partition")
            _require(len(set(self.partitions)) == len(self.partitions), "data.partitions lists a partition twice")
            for p in self.partitions:
                _require(bool(p) and "/" not in p and p not in (".", ".."),
                         f"data.partitions entry {p!r} is not a partition name")


BUILTIN_ENTRYPOINT = "inferloop.trainer.builtin:mlp"
# The built-in MLP's own parameters, also accepted as top-level `training:` keys (as before entrypoints)
MLP_KEYS = ("hidden", "activation", "lr", "epochs", "batch_size", "weight_decay")


class TrainingPolicy(_Section, frozen=True):
    data: DataSource
    features: list[str]
    target: str
    kind: Kind
    # the user's training code, "package.module:function", called with a TrainingContext; `params`
    # reach it unchanged (docs/training.md)
    entrypoint: str = BUILTIN_ENTRYPOINT
    params: dict[str, Any] = {}
    # the built-in MLP's parameters (None: its default); refused with any other entrypoint
    hidden: list[int] | None = None
    activation: Literal["relu", "gelu", "tanh"] | None = None
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    seed: int = 0
    holdout_fraction: float = 0.2  # rows held out (seeded split of the window) for metrics and gates
    threads: int = 1  # torch intra-op threads per process; part of the lineage (results depend on it)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    launcher: Literal["local", "torchrun"] = "local"
    nproc: int = 1  # processes under torchrun (one per GPU on cuda)
    schedule: str | None = None  # cron: the trainer service starts a build at these times

    def __post_init__(self) -> None:
        _require(len(self.features) > 0, "training.features must list at least one column")
        _require(len(set(self.features)) == len(self.features), "training.features lists a column twice")
        _require(self.target not in self.features, f"training.target {self.target!r} is also a feature")
        module, sep, function = self.entrypoint.partition(":")
        _require(bool(sep) and all(p.isidentifier() for p in module.split("."))
                 and all(p.isidentifier() for p in function.split(".")),
                 f"training.entrypoint {self.entrypoint!r} is not of the form \"package.module:function\"")
        if self.entrypoint != BUILTIN_ENTRYPOINT:
            given = [k for k in MLP_KEYS if getattr(self, k) is not None]
            _require(not given, f"training.{', training.'.join(given)}: parameters of the built-in MLP; with "
                                f"entrypoint {self.entrypoint!r}, give your function's parameters under training.params")
        if self.hidden is not None:
            _require(all(h >= 1 for h in self.hidden), f"training.hidden sizes must be at least 1, got {self.hidden}")
        if self.lr is not None:
            _finite(self.lr, "training.lr")
            _require(self.lr > 0, f"training.lr must be positive, got {self.lr}")
        if self.weight_decay is not None:
            _finite(self.weight_decay, "training.weight_decay")
            _require(self.weight_decay >= 0, "training.weight_decay must not be negative")
        if self.epochs is not None:
            _require(self.epochs >= 1, f"training.epochs must be at least 1, got {self.epochs}")
        if self.batch_size is not None:
            _require(self.batch_size >= 1, f"training.batch_size must be at least 1, got {self.batch_size}")
        _require(0 <= self.seed < 2**63, f"training.seed must be in [0, 2**63), got {self.seed}")
        _finite(self.holdout_fraction, "training.holdout_fraction")
        _require(0 < self.holdout_fraction < 1, "training.holdout_fraction must be between 0 and 1")
        _require(self.threads >= 1, f"training.threads must be at least 1, got {self.threads}")
        _require(self.nproc >= 1, f"training.nproc must be at least 1, got {self.nproc}")
        _require(self.nproc == 1 or self.launcher == "torchrun",
                 f"training.nproc: {self.nproc} needs `launcher: torchrun`")
        if self.schedule is not None:
            from croniter import croniter

            _require(croniter.is_valid(self.schedule),
                     f"training.schedule {self.schedule!r} is not a cron expression (e.g. '0 3 * * *')")

    def entrypoint_params(self) -> dict[str, Any]:
        """What the entrypoint receives: `params`, plus (built-in MLP) its top-level keys that are set."""
        mlp = {k: getattr(self, k) for k in MLP_KEYS if getattr(self, k) is not None}
        return {**mlp, **self.params}


# -- validation: --------------------------------------------------------------------------------
class NotifyTarget(_Section, frozen=True):
    """One `notify_on_fail` entry: `{webhook: URL}` (JSON POST) or `{slack: "#channel"}` (posted to the
    incoming-webhook URL in INFERLOOP_SLACK_WEBHOOK_URL)."""

    webhook: str | None = None
    slack: str | None = None

    def __post_init__(self) -> None:
        _require((self.webhook is None) != (self.slack is None),
                 "each notify_on_fail entry needs exactly one of `webhook: URL` or `slack: \"#channel\"`")
        if self.webhook is not None:
            _require(self.webhook.startswith(("http://", "https://")),
                     f"notify_on_fail webhook {self.webhook!r} is not an http(s) URL")
        if self.slack is not None:
            _require(bool(self.slack.strip()), "notify_on_fail slack channel must not be empty")


class ValidationPolicy(_Section, frozen=True):
    """Two gates. Gate 1 (absolute): every `min_<metric>` / `max_<metric>` bound holds on the holdout.
    Gate 2 (relative, when `compare_to` is set): the model in that stage is evaluated on the same
    holdout in the same run, and for each gated metric

        improvement = candidate - reference   (metrics where higher is better: r2, f1, accuracy, auc)
        improvement = reference - candidate   (metrics where lower is better: rmse, mae)

    must be >= `tolerance` (in the metric's own units). tolerance -0.005 lets the candidate be worse by
    at most 0.005; 0 means at least as good; a positive value demands a real improvement."""

    min_rmse: float | None = None
    max_rmse: float | None = None
    min_mae: float | None = None
    max_mae: float | None = None
    min_r2: float | None = None
    max_r2: float | None = None
    min_f1: float | None = None
    max_f1: float | None = None
    min_accuracy: float | None = None
    max_accuracy: float | None = None
    min_auc: float | None = None
    max_auc: float | None = None
    compare_to: Literal["staging", "shadow", "production"] | None = None
    tolerance: float = 0.0
    promote_on_pass: Literal["staging", "shadow", "production"] | None = None
    notify_on_fail: list[NotifyTarget] = []

    def __post_init__(self) -> None:
        _finite(self.tolerance, "validation.tolerance")
        _require(bool(self.thresholds()),
                 f"validation needs at least one threshold: min_<metric> or max_<metric> "
                 f"with metric one of {', '.join(ALL_METRICS)}")
        for _, _, metric, value in self.thresholds():
            _finite(value, f"validation threshold on {metric}")

    def thresholds(self) -> list[tuple[str, Literal["min", "max"], str, float]]:
        """(key, bound, metric, value) for every bound set, in a fixed order."""
        out: list[tuple[str, Literal["min", "max"], str, float]] = []
        for metric in ALL_METRICS:
            for bound in ("min", "max"):
                key = f"{bound}_{metric}"
                value = getattr(self, key)
                if value is not None:
                    out.append((key, bound, metric, float(value)))
        return out

    def gated_metrics(self) -> list[str]:
        return list(dict.fromkeys(metric for _, _, metric, _ in self.thresholds()))


# -- shadow: (read by the gateway) --------------------------------------------------------------
class ShadowPolicy(_Section, frozen=True):
    """Rules for a version in the `shadow` stage, evaluated on the gateway's rolling shadow report."""

    sample_rate: float = 1.0  # fraction of live requests mirrored to the shadow model
    min_requests: int = 500  # mirrored requests before any verdict
    max_prediction_psi: float = 0.1  # PSI between primary and shadow prediction distributions
    min_agreement: float = 0.9  # fraction of mirrored requests on which primary and shadow agree
    max_p99_latency_ratio: float = 2.0  # shadow p99 latency / primary p99 latency
    auto_promote: bool = False  # promote shadow to production when every rule above holds

    def __post_init__(self) -> None:
        for name in ("sample_rate", "max_prediction_psi", "min_agreement", "max_p99_latency_ratio"):
            _finite(getattr(self, name), f"shadow.{name}")
        _require(0 <= self.sample_rate <= 1, "shadow.sample_rate must be between 0 and 1")
        _require(0 <= self.min_agreement <= 1, "shadow.min_agreement must be between 0 and 1")
        _require(self.min_requests >= 1, "shadow.min_requests must be at least 1")
        _require(self.max_prediction_psi >= 0, "shadow.max_prediction_psi must not be negative")
        _require(self.max_p99_latency_ratio > 0, "shadow.max_p99_latency_ratio must be positive")


# -- monitor: (read by the gateway) -------------------------------------------------------------
class PsiMethod(_Section, frozen=True):
    """A feature drifts when its PSI over a window exceeds both `threshold` (the smallest shift worth a
    retrain) and the critical value for `false_alarm_rate`, which grows when the reference or the
    window is small (docs/drift.md)."""

    threshold: float = 0.10  # effect-size floor: PSI below this never trips
    exit_threshold: float | None = None  # drift state clears below this (hysteresis); default: threshold
    false_alarm_rate: float = 0.01  # chance that an undrifted window trips, over all features tested

    def __post_init__(self) -> None:
        _finite(self.threshold, "monitor.methods.psi.threshold")
        _require(self.threshold > 0, "monitor.methods.psi.threshold must be positive")
        if self.exit_threshold is not None:
            _finite(self.exit_threshold, "monitor.methods.psi.exit_threshold")
            _require(0 <= self.exit_threshold <= self.threshold,
                     "monitor.methods.psi.exit_threshold must be between 0 and threshold")
        _finite(self.false_alarm_rate, "monitor.methods.psi.false_alarm_rate")
        _require(0 < self.false_alarm_rate < 1, "monitor.methods.psi.false_alarm_rate must be between 0 and 1 "
                                                f"(exclusive), got {self.false_alarm_rate}")

    @property
    def exit_level(self) -> float:
        return self.threshold if self.exit_threshold is None else self.exit_threshold


class MonitorMethods(_Section, frozen=True):
    psi: PsiMethod = msgspec.field(default_factory=PsiMethod)


class TriggerPolicy(_Section, frozen=True):
    """What a drift trip does. retrain: POST the trainer's /v1/retrain (`url` = trainer base URL,
    default INFERLOOP_TRAINER_URL); airflow: trigger DAG `pipeline` at `url`; github: a
    repository_dispatch `event_type` on `repository`; webhook: JSON POST to `url`.
    `token_env` names the environment variable holding a bearer token, never the token itself."""

    action: Literal["retrain", "airflow", "github", "webhook"] = "retrain"
    pipeline: str | None = None
    url: str | None = None
    repository: str | None = None
    event_type: str = "inferloop-retrain"
    token_env: str | None = None

    def __post_init__(self) -> None:
        if self.url is not None:
            _require(self.url.startswith(("http://", "https://")), f"on_trigger.url {self.url!r} is not http(s)")
        if self.action == "airflow":
            _require(self.url is not None and self.pipeline is not None,
                     "on_trigger action airflow needs `url` and `pipeline` (the DAG id)")
        elif self.action == "github":
            _require(self.repository is not None and self.repository.count("/") == 1,
                     "on_trigger action github needs `repository: owner/name`")
        elif self.action == "webhook":
            _require(self.url is not None, "on_trigger action webhook needs `url`")


class MonitorPolicy(_Section, frozen=True):
    model: str | None = None  # the model watched; defaults to the policy's model
    methods: MonitorMethods = msgspec.field(default_factory=MonitorMethods)
    window: int = 1000  # rows per tumbling window the PSI is computed over
    window_seconds: float = 300.0  # a window also closes after this long, once it has min_samples rows
    # Undrifted windows trip at most methods.psi.false_alarm_rate of the time at any size (the critical
    # value grows as windows shrink); small windows only make small drift harder to see (docs/drift.md).
    min_samples: int = 500  # no verdict before this many inputs in the window
    consecutive: int = 1  # windows over the level in a row before a trip
    cooldown_s: float = 3600.0  # no second trip within this many seconds
    on_trigger: TriggerPolicy = msgspec.field(default_factory=TriggerPolicy)

    def __post_init__(self) -> None:
        _require(self.window >= 1, "monitor.window must be at least 1")
        _require(1 <= self.min_samples, "monitor.min_samples must be at least 1")
        _require(self.min_samples <= self.window, "monitor.min_samples must not exceed monitor.window")
        _require(self.consecutive >= 1, "monitor.consecutive must be at least 1")
        _finite(self.window_seconds, "monitor.window_seconds")
        _require(self.window_seconds > 0, "monitor.window_seconds must be positive")
        _finite(self.cooldown_s, "monitor.cooldown_s")
        _require(self.cooldown_s >= 0, "monitor.cooldown_s must not be negative")


# -- the whole file -----------------------------------------------------------------------------
class Policy(_Section, frozen=True):
    training: TrainingPolicy
    model: str = ""  # the registry model name; defaults to the file name without .yaml
    validation: ValidationPolicy | None = None
    shadow: ShadowPolicy | None = None
    monitor: MonitorPolicy | None = None

    def __post_init__(self) -> None:
        if self.validation is not None:
            metrics = METRICS[self.training.kind]
            for key, _, metric, _ in self.validation.thresholds():
                _require(metric in metrics, f"validation.{key}: {metric} is not a {self.training.kind} metric "
                                            f"(use one of {', '.join(metrics)})")
        if self.monitor is not None and self.monitor.model is not None and self.model:
            _require(self.monitor.model == self.model,
                     f"monitor.model {self.monitor.model!r} is not this policy's model {self.model!r}")

    @property
    def name(self) -> str:
        return self.model


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML would silently keep the last one."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _describe(error: msgspec.ValidationError) -> str:
    # "Object contains unknown field `lrr` - at `$.training`" -> "unknown key `lrr` in training"
    text = str(error).replace("Object contains unknown field", "unknown key")
    text = text.replace("Object missing required field", "missing required key")
    head, sep, where = text.rpartition(" - at `$")
    if sep:
        where = where.rstrip("`").lstrip(".")
        return f"{head} in {where}" if where else head
    return text


def parse_policy(text: str, source: str = "<policy>", default_name: str = "") -> Policy:
    """Decode one policy document. Errors are `PolicyError`s that start with `source`."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"{source}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise PolicyError(f"{source}: empty policy (expected a mapping with a `training:` section)")
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping of sections, got a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise PolicyError(f"{source}: keys must be strings, got {bad[0]!r}")
    if not data.get("model") and default_name:
        data = {**data, "model": default_name}
    try:
        policy = msgspec.convert(data, Policy, strict=True)
    except msgspec.ValidationError as exc:
        raise PolicyError(f"{source}: {_describe(exc)}") from None
    try:
        check_model_name(policy.model)
    except InvalidName as exc:
        raise PolicyError(f"{source}: model: {exc}") from None
    return policy


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and decode a policy file; the model name defaults to the file's stem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{p}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{p}: cannot read policy: {exc}") from None
    return parse_policy(text, str(p), default_name=p.stem)


def load_policies(directory: str | os.PathLike[str]) -> dict[str, tuple[Path, Policy]]:
    """Every `*.yaml` / `*.yml` policy in `directory`, by model name (two files for one model is an error)."""
    d = Path(directory)
    if not d.is_dir():
        raise PolicyError(f"{d}: policies directory not found")
    out: dict[str, tuple[Path, Policy]] = {}
    for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
        policy = load_policy(path)
        if policy.name in out:
            raise PolicyError(f"{path}: model {policy.name!r} already has a policy in {out[policy.name][0]}")
        out[policy.name] = (path, policy)
    return out
