"""ONNX models (a torch export, a scikit-learn pipeline or a gradient-boosted model through their
converters), run on onnxruntime: the optional extra `pip install 'inferloop[onnx]'`.

Before a session is created the model is checked: no external data (a path that would be read from
the serving machine), no operator domains beyond the standard ones (a custom domain means a native
library), no model-local functions. The signature comes from the model's own graph.
"""

from __future__ import annotations

from typing import Any

from inferloop.registry.errors import UnsupportedArtifact
from inferloop.registry.manifest import TensorSpec

FORMAT = "onnx"
EXTRA = "pip install 'inferloop[onnx]'"
_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
_ELEM_TYPES = {1: "FP32", 10: "FP16", 11: "FP64", 16: "BF16", 7: "INT64", 6: "INT32", 5: "INT16", 3: "INT8",
               2: "UINT8", 9: "BOOL"}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UnsupportedArtifact(f"ONNX models need onnx and onnxruntime: {EXTRA}") from None
    return onnx


def parse_model(data: bytes) -> Any:
    """The checked `onnx.ModelProto` (refused if it could reach outside its own bytes)."""
    onnx = _onnx()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError types
        raise UnsupportedArtifact(f"not an ONNX model: {exc}") from None
    graph = model.graph
    if not graph.input or not graph.output:
        raise UnsupportedArtifact("not an ONNX model: its graph has no inputs or outputs")
    if model.functions:
        raise UnsupportedArtifact("ONNX model refused: it defines model-local functions")
    for opset in model.opset_import:
        if opset.domain not in _DOMAINS:
            raise UnsupportedArtifact(f"ONNX model refused: operator domain {opset.domain!r} needs a custom "
                                      "native library")
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.domain not in _DOMAINS:
            raise UnsupportedArtifact(f"ONNX model refused: node {node.name!r} uses domain {node.domain!r}")
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise UnsupportedArtifact(f"ONNX model refused: tensor {tensor.name!r} keeps its data in an external "
                                      "file; embed it (onnx.save_model(..., save_as_external_data=False))")
    return model


def _specs(values: Any) -> list[TensorSpec]:
    specs = []
    for value in values:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise UnsupportedArtifact(f"ONNX value {value.name!r} is a {kind}, not a tensor (for scikit-learn "
                                      "classifiers convert with options={'zipmap': False})")
        tensor = value.type.tensor_type
        datatype = _ELEM_TYPES.get(tensor.elem_type)
        if datatype is None:
            raise UnsupportedArtifact(f"ONNX value {value.name!r} has element type {tensor.elem_type}, which "
                                      "cannot be served")
        shape = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not shape:
            raise UnsupportedArtifact(f"ONNX value {value.name!r} has no batch axis")
        specs.append(TensorSpec(value.name, datatype, [-1, *shape[1:]]))
    return specs


def onnx_signature(data: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    model = parse_model(data)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return _specs(inputs), _specs(model.graph.output)


def load_session(data: bytes, device: str = "cpu") -> Any:
    parse_model(data)
    try:
        import onnxruntime
    except ImportError:
        raise UnsupportedArtifact(f"ONNX models need onnxruntime: {EXTRA}") from None
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UnsupportedArtifact(f"onnxruntime cannot load the model: {str(exc).strip()[:300]}") from None


def serialize(model: Any) -> bytes:
    """The bytes of an `onnx.ModelProto` (or bytes as given), canonical: the opset imports (whose
    order means nothing; skl2onnx lists them in hash-seed order) sorted by domain, and protobuf's
    deterministic encoding, so the same model always has the same digest and registers once."""
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    opsets = sorted(model.opset_import, key=lambda o: (o.domain, o.version))
    if list(model.opset_import) != opsets:
        model = type(model).FromString(model.SerializeToString())  # the caller's proto stays as it was
        del model.opset_import[:]
        model.opset_import.extend(opsets)
    return bytes(model.SerializeToString(deterministic=True))
