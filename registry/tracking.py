"""`reg.track(name)`: collect params and metrics during a training run, capture lineage
automatically, and register the trained module with its reference statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from inferloop.registry.artifact import FORMAT, save_module
from inferloop.registry.lineage import capture_code, capture_environment
from inferloop.registry.manifest import (
    ArtifactInfo,
    DataLineage,
    FeatureSpec,
    InputSignature,
    Lineage,
    OutputKind,
    ValidationRecord,
    VersionManifest,
)
from inferloop.registry.names import check_model_name
from inferloop.registry.reference import reference_stats

if TYPE_CHECKING:
    from inferloop.registry.sync import Registry
    from torch import nn


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class Run:
    """One training run. Use as `with reg.track("name") as run:`; `register` ends it."""

    def __init__(self, registry: Registry, name: str, *, actor: str = "") -> None:
        self.registry = registry
        self.name = check_model_name(name)
        self.actor = actor
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.seed: int | None = None
        self.data: DataLineage | None = None
        self.world_size = 1
        self.device = "cpu"
        self.manifest: VersionManifest | None = None
        self.created = False

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def log_param(self, key: str, value: Any) -> None:
        self.params[str(key)] = value

    def log_params(self, params: dict[str, Any]) -> None:
        for k, v in params.items():
            self.log_param(k, v)

    def log_metric(self, key: str, value: float) -> None:
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"metric {key!r} is not finite: {value}")
        self.metrics[str(key)] = value

    def set_data(self, data: DataLineage) -> None:
        self.data = data

    def register(
        self,
        model: nn.Module,
        *,
        example_inputs: Any,
        reference: Any | None = None,
        tags: list[str] | None = None,
        feature_names: list[str] | None = None,
        output_kind: OutputKind = "regression",
        classes: list[str] | None = None,
        parent: int | None = None,
        validation: ValidationRecord | None = None,
    ) -> int:
        """Register `model`; returns its version number (the existing one if identical)."""
        import torch

        warm = _as_array(example_inputs)
        if warm.ndim != 2 or warm.shape[0] == 0:
            raise ValueError(f"example_inputs must be a non-empty 2-D batch, got shape {warm.shape}")
        names = feature_names or [f"x{i}" for i in range(warm.shape[1])]
        if len(names) != warm.shape[1]:
            raise ValueError(f"{len(names)} feature names for {warm.shape[1]} input columns")
        data, spec = save_module(model)
        ref = None
        if reference is not None:
            ref_x = _as_array(reference)
            with torch.inference_mode():
                was_training = model.training
                model.eval()
                param = next(model.parameters())
                preds = model(torch.as_tensor(ref_x, device=param.device)).float().cpu().numpy()
                model.train(was_training)
            if output_kind == "binary":
                preds = 1.0 / (1.0 + np.exp(-preds))
            ref = reference_stats(ref_x, names, preds)
        signature = InputSignature(
            features=[FeatureSpec(n) for n in names], output_kind=output_kind, outputs=spec.out_features,
            classes=list(classes or []),
        )
        lineage = Lineage(code=capture_code(), environment=capture_environment(self.device), params=self.params,
                          seed=self.seed, data=self.data, world_size=self.world_size)
        manifest, created = self.registry.register_artifact(
            self.name, data, lambda digest, size: ArtifactInfo(digest, size, FORMAT, spec), lineage, signature,
            metrics=self.metrics, reference=ref, warmup=warm[:16].astype(float).tolist(), tags=tags,
            parent=parent, validation=validation, actor=self.actor,
        )
        self.manifest, self.created = manifest, created
        return manifest.version
