"""`reg.track(name)`: collect params and metrics during a training run, capture lineage
automatically, and register the trained module with its reference statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

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
    DataLineage,
    EntrypointLineage,
    InputSignature,
    Lineage,
    OutputKind,
    ReferenceStats,
    ValidationRecord,
    VersionManifest,
)
from inferloop.registry.names import check_model_name
from inferloop.registry.packaging import PackagedModel, package_model
from inferloop.registry.reference import reference_stats
from inferloop.registry.runnable import Runnable, open_runnable

if TYPE_CHECKING:
    from inferloop.registry.sync import Registry


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
        self.entrypoint: EntrypointLineage | None = None  # set by the trainer: whose code trained this
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
        packaged = package_model(model, example_inputs, dynamic_axes=dynamic_axes)
        signature = packaged.signature(feature_names, output_kind, classes)
        return self.register_packaged(packaged, signature, reference=packaged.arrays(reference)
                                      if reference is not None else None, tags=tags, parent=parent,
                                      validation=validation)

    def register_packaged(
        self,
        packaged: PackagedModel,
        signature: InputSignature,
        *,
        reference: list[np.ndarray] | None = None,
        tags: list[str] | None = None,
        parent: int | None = None,
        validation: ValidationRecord | None = None,
        runnable: Runnable | None = None,
    ) -> int:
        """Register an already packaged model (`package_model`): the trainer packages once, judges the
        packaged artifact on its holdout, then registers those same bytes. `reference`: arrays in
        signature order; `runnable`: the packaged bytes already opened (else they are opened here)."""
        if runnable is None:
            runnable = open_runnable(packaged.data, packaged.info("", len(packaged.data)), signature)
        warm = packaged.warmup_arrays()
        try:
            outputs = runnable.run(warm)
        except Exception as exc:  # noqa: BLE001 - a model that cannot run its own examples is refused
            raise UnsupportedArtifact(f"the packaged model fails on its example inputs: {exc}") from None
        _check_outputs(outputs, signature)
        ref = _reference(runnable, reference, signature) if reference is not None else None
        lineage = Lineage(code=capture_code(), environment=capture_environment(self.device), params=self.params,
                          seed=self.seed, data=self.data, world_size=self.world_size, entrypoint=self.entrypoint)
        tabular = is_tabular(signature)
        manifest, created = self.registry.register_artifact(
            self.name, packaged.data, packaged.info, lineage, signature, metrics=self.metrics, reference=ref,
            warmup=warm[0][:16].astype(float).tolist() if tabular else [],
            warmup_inputs={} if tabular else {spec.name: a.tolist() for spec, a in zip(signature.tensor_inputs(),
                                                                                        warm, strict=True)},
            tags=tags, parent=parent, validation=validation, actor=self.actor,
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
