"""`package_model`: turn what a user trained (any `torch.nn.Module`, the built-in MLP, or an ONNX model)
into artifact bytes, its tensor signature and its example inputs as arrays of the declared dtypes.

Registration and the trainer both package first and then run the *packaged* bytes (`runnable`), so
what is measured, gated and stored is one artifact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferloop.registry.errors import UnsupportedArtifact
from inferloop.registry.manifest import (
    ArtifactInfo,
    FeatureSpec,
    InputSignature,
    ModelSpec,
    OutputKind,
    TensorSpec,
)

NUMPY_DTYPES = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "INT64": "int64", "INT32": "int32",
                "INT16": "int16", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
WARMUP_ROWS, WARMUP_VALUES = 16, 65_536


@dataclass(frozen=True)
class PackagedModel:
    data: bytes
    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    layout: str
    examples: list[np.ndarray]  # one per input, in signature order
    spec: ModelSpec | None = None  # the built-in MLP's architecture (safetensors artifacts only)

    def info(self, digest: str, size: int) -> ArtifactInfo:
        return ArtifactInfo(digest, size, self.format, self.spec)

    def signature(self, feature_names: Sequence[str] | None, output_kind: OutputKind,
                  classes: Sequence[str] | None) -> InputSignature:
        first = self.inputs[0]
        if self.spec is not None:  # the built-in MLP keeps the signature form it always had
            names = list(feature_names or [f"x{i}" for i in range(first.shape[1])])
            if len(names) != first.shape[1]:
                raise ValueError(f"{len(names)} feature names for {first.shape[1]} input columns")
            return InputSignature(features=[FeatureSpec(n) for n in names], output_kind=output_kind,
                                  outputs=self.spec.out_features, classes=list(classes or []))
        tabular = len(self.inputs) == 1 and first.datatype == "FP32" and len(first.shape) == 2 and first.shape[1] > 0
        if feature_names is not None and not tabular:
            raise ValueError("feature_names name the columns of one 2-D FP32 input; this model takes "
                             + ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in self.inputs))
        names = list(feature_names or ([f"x{i}" for i in range(first.shape[1])] if tabular else []))
        if tabular and len(names) != first.shape[1]:
            raise ValueError(f"{len(names)} feature names for {first.shape[1]} input columns")
        out = self.outputs[0].shape
        width = out[1] if len(out) == 2 and out[1] > 0 else 1
        return InputSignature(features=[FeatureSpec(n) for n in names], output_kind=output_kind, outputs=width,
                              classes=list(classes or []), inputs=self.inputs, output_tensors=self.outputs,
                              input_layout="dict" if self.layout == "dict" else "args")

    def arrays(self, values: Any) -> list[np.ndarray]:
        """Inputs given like `example_inputs` (a tensor, a tuple or a dict) as arrays in signature order."""
        return signature_arrays(self.inputs, values)

    def warmup_arrays(self) -> list[np.ndarray]:
        per_row = max(1, sum(int(np.prod(a.shape[1:])) for a in self.examples))
        rows = max(1, min(WARMUP_ROWS, len(self.examples[0]), WARMUP_VALUES // per_row))
        return [np.ascontiguousarray(a[:rows]) for a in self.examples]


def signature_arrays(inputs: Sequence[TensorSpec], values: Any) -> list[np.ndarray]:
    """`values` (a tensor or array, a tuple of them, or a dict by input name) as arrays of the declared
    dtypes, in the order of `inputs`."""
    if isinstance(values, Mapping):
        missing = [t.name for t in inputs if t.name not in values]
        if missing:
            raise ValueError(f"inputs are missing {missing}")
        items = [values[t.name] for t in inputs]
    else:
        items = list(values) if isinstance(values, tuple) else [values]
    if len(items) != len(inputs):
        raise ValueError(f"{len(items)} inputs given; the model takes {len(inputs)} "
                         f"({', '.join(t.name for t in inputs)})")
    arrays = [_array(v, NUMPY_DTYPES.get(t.datatype, "float32")) for v, t in zip(items, inputs, strict=True)]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"inputs have different batch sizes: {[len(a) for a in arrays]}")
    return arrays


def _array(value: Any, dtype: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=dtype))


def _is_onnx(model: Any) -> bool:
    return isinstance(model, bytes | bytearray) or type(model).__name__ == "ModelProto"


def package_model(model: Any, example_inputs: Any, *, dynamic_axes: Mapping[str, Sequence[int]] | None = None
                  ) -> PackagedModel:
    if _is_onnx(model):
        from inferloop.registry.onnx_artifact import FORMAT, onnx_signature, serialize

        if dynamic_axes:
            raise ValueError("dynamic_axes applies to torch modules; an ONNX model declares its own axes")
        data = serialize(model)
        inputs, outputs = onnx_signature(data)
        packaged = PackagedModel(data, FORMAT, inputs, outputs, "args", [])
        return PackagedModel(data, FORMAT, inputs, outputs, "args", packaged.arrays(example_inputs))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        raise UnsupportedArtifact("torch is needed to register torch modules") from None
    if not isinstance(model, torch.nn.Module):
        raise UnsupportedArtifact(f"cannot register a {type(model).__name__}: give a torch.nn.Module or an ONNX "
                                  "model (onnx.ModelProto or its bytes)")
    from inferloop.registry.architectures import MLP

    if isinstance(model, MLP):
        return _package_mlp(model, example_inputs)
    from inferloop.registry.exported import FORMAT as PT2
    from inferloop.registry.exported import export_program

    data, inputs, outputs, layout = export_program(model, example_inputs, dynamic_axes=dynamic_axes)
    packaged = PackagedModel(data, PT2, inputs, outputs, layout, [])
    return PackagedModel(data, PT2, inputs, outputs, layout, packaged.arrays(example_inputs))


def _package_mlp(model: Any, example_inputs: Any) -> PackagedModel:
    """The built-in MLP: safetensors weights plus its spec (no export needed to rebuild it)."""
    from inferloop.registry.artifact import FORMAT, save_module

    data, spec = save_module(model)
    inputs = [TensorSpec("input", "FP32", [-1, spec.in_features])]
    outputs = [TensorSpec("output", "FP32", [-1, spec.out_features])]
    examples = [_array(example_inputs, "float32")]
    if examples[0].ndim != 2 or examples[0].shape[0] == 0 or examples[0].shape[1] != spec.in_features:
        raise ValueError(f"example_inputs must be a non-empty batch of {spec.in_features} columns, "
                         f"got shape {examples[0].shape}")
    return PackagedModel(data, FORMAT, inputs, outputs, "args", examples, spec)
