"""OIP v2 gRPC messages to the gateway's arrays and back.

A `ModelInferRequest` carries each input's values either typed (`contents.fp32_contents`...) or raw
(`raw_input_contents`, one little-endian byte string per input, in the order of `inputs`). Both are
read here into flat arrays; every check after that (datatype, shape, batch agreement, finiteness,
integer ranges, the row limit) is `protocol`'s, the same code the REST front door runs, so both
answer the same request with the same message.

The answer mirrors the request: raw outputs for a raw request (what tritonclient sends, and the
only form its `as_numpy` reads), typed contents for a typed one (FP16 outputs have no typed field:
they make the whole answer raw, as the protocol wants raw contents all or nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from inferloop.gateway.errors import InvalidInput
from inferloop.gateway.transport.grpc_messages import pb
from inferloop.gateway.transport.protocol import (
    NUMERIC_DTYPES,
    InferCall,
    ValueReader,
    binary_values,
    check_sent_integers,
    named_tensors,
    no_inputs,
    output_wire,
    raw_bytes,
    selected_outputs,
    tabular_rows,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from inferloop.gateway.serving.batcher import Prediction
    from inferloop.gateway.serving.slot import ModelSignature

# datatype -> the InferTensorContents field that carries it, and that field's numpy dtype
CONTENTS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "?"),
    "INT8": ("int_contents", "<i4"), "INT16": ("int_contents", "<i4"), "INT32": ("int_contents", "<i4"),
    "INT64": ("int64_contents", "<i8"),
    "UINT8": ("uint_contents", "<u4"), "UINT16": ("uint_contents", "<u4"), "UINT32": ("uint_contents", "<u4"),
    "UINT64": ("uint64_contents", "<u8"),
    "FP32": ("fp32_contents", "<f4"), "FP64": ("fp64_contents", "<f8"),
}


def _raw_reader(raw: Sequence[bytes]) -> ValueReader:
    def read(index: int, tensor: Any) -> tuple[np.ndarray, bool]:
        if tensor.HasField("contents"):
            raise InvalidInput(f"input {tensor.name!r} has typed contents and raw_input_contents: send one or the "
                               "other")
        wire = "?" if tensor.datatype == "BOOL" else NUMERIC_DTYPES.get(tensor.datatype)
        if wire is None:
            raise InvalidInput(f"input {tensor.name!r}: datatype {tensor.datatype!r} cannot travel as "
                               "raw_input_contents")
        data = raw[index]
        return binary_values(tensor, data, 0, len(data), wire, "raw_input_contents holds"), False

    return read


def _typed_read(_index: int, tensor: Any) -> tuple[np.ndarray, bool]:
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"input {tensor.name!r}: datatype {tensor.datatype!r} has no typed contents; send it "
                           "in raw_input_contents")
    name, dtype = field
    values = np.array(getattr(tensor.contents, name), dtype=dtype)
    check_sent_integers(tensor.name, tensor.datatype, values)  # INT8 300 travels in an int32 field
    return values, False


def decode_request(request: Any, sig: ModelSignature, max_rows: int) -> InferCall:
    """The call to run; `binary_output` says the answer goes raw (the request came raw)."""
    inputs = request.inputs
    if not inputs:
        raise no_inputs(sig)
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidInput(f"raw_input_contents holds {len(raw)} tensors for {len(inputs)} inputs: send one per "
                           "input, in the order of 'inputs'")
    read = _raw_reader(raw) if raw else _typed_read
    arrays = (tabular_rows(inputs, read, sig, max_rows),) if sig.tabular else named_tensors(inputs, read, sig,
                                                                                              max_rows)
    selected = selected_outputs((o.name for o in request.outputs), sig) if request.outputs else None
    return InferCall(arrays, request.id or None, bool(raw), selected)


def encode_response(model: str, prediction: Prediction, call: InferCall) -> Any:
    outputs = prediction.outputs
    indices = call.selected if call.selected is not None else range(len(outputs))
    wire = [output_wire(outputs[i]) for i in indices]
    raw = call.binary_output or any(datatype not in CONTENTS for datatype, _ in wire)
    response = pb.ModelInferResponse(model_name=model, model_version=str(prediction.version), id=call.id or "")
    for i, (datatype, out) in zip(indices, wire, strict=True):
        tensor = response.outputs.add(name=prediction.output_names[i], datatype=datatype, shape=out.shape)
        if raw:
            response.raw_output_contents.append(raw_bytes(out))
        else:
            getattr(tensor.contents, CONTENTS[datatype][0]).extend(out.ravel().tolist())
    return response
