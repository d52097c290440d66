"""A model's loop in one YAML file (`policies/<model>.yaml`): how it is trained, gated, shadowed and
watched. The trainer and the gateway read it; the registry knows nothing of it (it only checks
model names with the registry's own rules)."""

from __future__ import annotations

from .schema import (
    ALL_METRICS,
    BUILTIN_ENTRYPOINT,
    METRICS,
    MLP_KEYS,
    DataSource,
    Direction,
    Kind,
    MonitorMethods,
    MonitorPolicy,
    NotifyTarget,
    Policy,
    PolicyError,
    PsiMethod,
    ShadowPolicy,
    TrainingPolicy,
    TriggerPolicy,
    ValidationPolicy,
    load_policies,
    load_policy,
    parse_policy,
)

__all__ = [
    "ALL_METRICS", "BUILTIN_ENTRYPOINT", "METRICS", "MLP_KEYS", "DataSource", "Direction", "Kind", "MonitorMethods", "MonitorPolicy", "NotifyTarget", "Policy",
    "PolicyError", "PsiMethod", "ShadowPolicy", "TrainingPolicy", "TriggerPolicy", "ValidationPolicy",
    "load_policies", "load_policy", "parse_policy",
]
