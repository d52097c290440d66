"""`reg.track(name)`: collect params and metrics during a training run, capture lineage
automatically, and register the trained module with its reference statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from inferloop.registry.artifact import FORMAT, save_module
from inferloop.registry.drift_columns import (
    input_columns,
    input_matrix,
    is_tabular,
    output_column,
    output_values,
)
from inferloop.registry.errors import UnsupportedArtifact
from inferloop.registry.lineage import capture_code, capture_environment
from inferloop.registry.manifest import (
    ArtifactInfo,
    DataLineage,
    FeatureSpec,
    InputSignature,
    Lineage,
    OutputKind,
    ReferenceStats,
    ValidationRecord,
    VersionManifest,
)
from inferloop.registry.names import check_model_name
from inferloop.registry.packaging import package_model
from inferloop.registry.reference import reference_stats
from inferloop.registry.runnable import Runnable, open_runnable

if TYPE_CHECKING:
    from torch import nn

    from inferloop.registry.sync import Registry


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
        model: Any,
        *,
        example_inputs: Any,
        reference: Any | None = None,
        tags: list[str] | None = None,
        feature_names: list[str] | None = None,
        output_kind: OutputKind = "regression",
        classes: list[str] | None = None,
        parent: int | None = None,
        validation: ValidationRecord | None = None,
        dynamic_axes: dict[str, list[int]] | None = None,
    ) -> int:
        """Register `model`; returns its version number (the existing one if identical).

        `model`: any `torch.nn.Module` (stored as a torch.export program), the built-in `MLP` (stored
        as safetensors), or an ONNX model (`onnx.ModelProto` or its bytes). `example_inputs`: a
        tensor/array, a tuple (positional inputs) or a dict of named inputs, batch axis first; its first
        rows become the warm-up inputs. `reference`: inputs in the same form (training rows) for drift
        statistics; `dynamic_axes`: further dynamic axes per input name (axis 0 always is)."""
        from inferloop.registry.architectures import MLP

        if isinstance(model, MLP):
            return self._register_mlp(model, example_inputs=example_inputs, reference=reference, tags=tags,
                                      feature_names=feature_names, output_kind=output_kind, classes=classes,
                                      parent=parent, validation=validation)
        packaged = package_model(model, example_inputs, dynamic_axes=dynamic_axes)
        signature = packaged.signature(feature_names, output_kind, classes)
        runnable = open_runnable(packaged.data, packaged.info("", len(packaged.data)), signature)
        warm = packaged.warmup_arrays()
        try:
            outputs = runnable.run(warm)
        except Exception as exc:  # noqa: BLE001 - a model that cannot run its own examples is refused
            raise UnsupportedArtifact(f"the packaged model fails on its example inputs: {exc}") from None
        _check_outputs(outputs, signature)
        ref = None
        if reference is not None:
            ref = _reference(runnable, packaged.arrays(reference), signature)
        lineage = Lineage(code=capture_code(), environment=capture_environment(self.device), params=self.params,
                          seed=self.seed, data=self.data, world_size=self.world_size)
        tabular = is_tabular(signature)
        manifest, created = self.registry.register_artifact(
            self.name, packaged.data, packaged.info, lineage, signature, metrics=self.metrics, reference=ref,
            warmup=warm[0][:16].astype(float).tolist() if tabular else [],
            warmup_inputs={} if tabular else {spec.name: a.tolist() for spec, a in zip(signature.inputs, warm,
                                                                                        strict=True)},
            tags=tags, parent=parent, validation=validation, actor=self.actor,
        )
        self.manifest, self.created = manifest, created
        return manifest.version

    def _register_mlp(
        self,
        model: nn.Module,
        *,
        example_inputs: Any,
        reference: Any | None,
        tags: list[str] | None,
        feature_names: list[str] | None,
        output_kind: OutputKind,
        classes: list[str] | None,
        parent: int | None,
        validation: ValidationRecord | None,
    ) -> int:
        """The built-in MLP: safetensors weights plus its spec (what the trainer's builds are)."""
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
            if output_kind == "binary":  # as served: probabilities (runnable.TorchRunnable)
                preds = 1.0 / (1.0 + np.exp(-preds))
            elif output_kind == "multiclass":
                shifted = np.exp(preds - preds.max(axis=1, keepdims=True))
                preds = shifted / shifted.sum(axis=1, keepdims=True)
            column = output_values(preds)  # drift also watches the first output (registry.drift_columns)
            ref = reference_stats(np.column_stack([ref_x, column]), [*names, "output:output"], preds)
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


def _check_outputs(outputs: list[np.ndarray], signature: InputSignature) -> None:
    for spec, out in zip(signature.tensor_outputs(), outputs, strict=True):
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise UnsupportedArtifact(f"the packaged model gives non-finite values in output {spec.name!r} on its "
                                      "example inputs")


def _reference(runnable: Runnable, arrays: list[np.ndarray], signature: InputSignature) -> ReferenceStats:
    """Drift statistics over the columns `drift_columns` defines: the input columns (features, or row
    summaries for non-tabular inputs) and the first output's first column."""
    rows = len(arrays[0])
    preds = np.concatenate([output_values(runnable.run([a[i:i + 4096] for a in arrays])[0])
                            for i in range(0, rows, 4096)])
    tabular = is_tabular(signature)
    columns = input_matrix(signature, arrays, tabular)
    names = input_columns(signature)
    stats = reference_stats(np.column_stack([columns, preds]), [*names, output_column(signature)], preds)
    return stats
