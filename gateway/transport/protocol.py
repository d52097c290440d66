"""Wire formats: Open Inference Protocol v2 (JSON, plus Triton's binary tensor extension) and the
v1 `{"instances": ...}` form, decoded with msgspec straight from the body bytes.

Everything a request can get wrong becomes `InvalidInput` with a message that names the input,
the shape or the row; nothing here raises anything else for bad input.

Tabular models (one FP32 input of features f1..fk) accept:
- one tensor of shape [n, k] (any name; metadata calls it "input"), or
- one tensor per feature, named by the feature, each of shape [n] or [n, 1];
and answer one FP32 tensor "output" of shape [n, outputs] (binary: probability of class 1,
multiclass: class probabilities, regression: the raw value).

Every other model declares named tensors (`ModelSignature.inputs` / `output_specs`): a request sends
each input by name (a single-input model takes its one tensor under any name), of the declared
datatype (a float input also takes any float or integer datatype, an integer input any integer
datatype, values checked), with the declared shape (-1: any size; axis 0 is the batch and must agree
across inputs). The answer holds every output, or those named in `outputs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec
import numpy as np

from inferloop.gateway.errors import InvalidInput
from inferloop.gateway.serving.slot import ModelSignature

OUTPUT_NAME = "output"
INPUT_NAME = "input"
FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32 = np.dtype(np.float32)
NUMERIC_DTYPES = {
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
}
# Bodies larger than this skip the one-pass decode: their declared shapes are checked against the
# row limit before any data is decoded (an 8 MiB body of 500k rows is refused without building them).
SMALL_BODY = 64 * 1024


class InferInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw = msgspec.Raw()  # decoded later, once the datatype and shape are known
    parameters: dict[str, Any] | None = None


class FlatInput(msgspec.Struct):
    """The common case, decoded in one pass: numbers in a flat list."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float]
    parameters: dict[str, Any] | None = None


class RequestedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct):
    inputs: list[InferInput]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


class FlatRequest(msgspec.Struct):
    inputs: list[FlatInput]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


class OutputTensor(msgspec.Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(msgspec.Struct, omit_defaults=True):
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None


class PredictRows(msgspec.Struct):
    instances: list[list[float]]


class PredictRecords(msgspec.Struct):
    instances: list[dict[str, float]]


class PredictResponse(msgspec.Struct):
    predictions: list[Any]
    model: str
    version: int


class InferCall(NamedTuple):
    inputs: tuple[np.ndarray, ...]  # one per signature input, C-contiguous, of its dtype (tabular: finite FP32)
    id: str | None
    binary_output: bool
    selected: tuple[int, ...] | None = None  # indices of the outputs asked for (None: all)


class TensorHead(Protocol):
    """What every check reads of a sent tensor: a JSON `InferInput`, or a gRPC `InferInputTensor`."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> Sequence[int]: ...


# A transport's reader of one tensor's values: (index, tensor) -> its flat values as sent,
# and whether they are known finite and within float32 (so the tabular path may skip that check).
ValueReader = Callable[[int, Any], tuple[np.ndarray, bool]]

_T = TypeVar("_T")

_request = msgspec.json.Decoder(InferRequest)
_flat_request = msgspec.json.Decoder(FlatRequest)
_flat = msgspec.json.Decoder(list[float])
_nested = msgspec.json.Decoder(list[list[float]])
_rows = msgspec.json.Decoder(PredictRows)
_records = msgspec.json.Decoder(PredictRecords)
_encoder = msgspec.json.Encoder()


def _decode(decoder: msgspec.json.Decoder[_T], data: bytes | memoryview, what: str) -> _T:
    try:
        return decoder.decode(data)
    except RecursionError:  # msgspec's answer to JSON nested deeper than the interpreter's stack
        raise InvalidInput(f"malformed {what}: JSON nested too deeply") from None
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        hint = ""
        if any(word in bytes(data) for word in (b"NaN", b"Infinity")):
            hint = " (NaN and Infinity are not JSON numbers, and inputs must be finite)"
        raise InvalidInput(f"malformed JSON in {what}: {exc}{hint}") from None


def checked_rows(values: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """Cast to float32 after checking every value is finite and fits float32 (NaN fails `<=`)."""
    ok = np.abs(values) <= FLOAT32_MAX
    if not ok.all():
        row, col = (int(i) for i in np.argwhere(~ok)[0])
        raise InvalidInput(f"input value at row {row}, feature {features[col]!r} is {float(values[row, col])!r}: inputs "
                           "must be finite numbers within float32 range (no NaN or Inf)")
    return np.ascontiguousarray(values, dtype=np.float32)


def check_row_count(n: int, max_rows: int) -> None:
    if n == 0:
        raise InvalidInput("empty batch: the request has no rows")
    if n > max_rows:
        raise InvalidInput(f"{n} rows exceed the limit of {max_rows} rows per request; split the request")


def _check_declared_rows(inputs: Sequence[TensorHead], max_rows: int) -> None:
    """Refuse a request whose declared shapes exceed the row limit before decoding any data."""
    for tensor in inputs:
        if tensor.shape and isinstance(tensor.shape[0], int) and tensor.shape[0] > max_rows:
            check_row_count(tensor.shape[0], max_rows)


# -- Open Inference Protocol v2 ---------------------------------------------------------------
def decode_infer(body: bytes, header_length: int | None, sig: ModelSignature, max_rows: int) -> InferCall:
    if not sig.tabular:
        return decode_tensors(body, header_length, sig, max_rows)
    if header_length is None and len(body) <= SMALL_BODY:
        fast = _decode_single_flat(body, sig, max_rows)
        if fast is not None:
            return fast
    request, binary = _split_request(body, header_length)
    if not request.inputs:
        raise no_inputs(sig)
    return InferCall((tabular_rows(request.inputs, _json_reader(binary), sig, max_rows),), request.id,
                     *_wanted_outputs(request, sig))


def tabular_rows(inputs: Sequence[TensorHead], read: ValueReader, sig: ModelSignature, max_rows: int) -> np.ndarray:
    """A tabular model's [n, features] float32 rows from the sent tensors (one [n, k] tensor or one per
    feature), every check made; `read` gives each tensor's values as its transport carries them."""
    _check_declared_rows(inputs, max_rows)
    tensors, finite = _input_values(inputs, read)
    rows = _assemble(inputs, tensors, sig)
    check_row_count(len(rows), max_rows)
    if not finite:
        rows = checked_rows(rows, sig.features)
    elif not rows.flags.c_contiguous:
        rows = np.ascontiguousarray(rows)
    return rows


def _split_request(body: bytes, header_length: int | None) -> tuple[InferRequest, bytes | memoryview]:
    """The JSON request, and the binary tensor bytes after it (Triton's binary extension)."""
    binary: bytes | memoryview = b""
    header: bytes | memoryview = body  # the JSON part: the whole body unless binary tensors follow it
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {header_length} does not fit a body of "
                               f"{len(body)} bytes")
        binary, header = memoryview(body)[header_length:], memoryview(body)[:header_length]
    return _decode(_request, header, "inference request"), binary


def no_inputs(sig: ModelSignature) -> InvalidInput:
    if sig.tabular:
        return InvalidInput(f"'inputs' is empty: send one tensor of shape [n, {sig.width}] or one tensor per feature")
    return InvalidInput(f"'inputs' is empty: this model takes {describe_inputs(sig)}")


def describe_inputs(sig: ModelSignature) -> str:
    return ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in sig.inputs)


def decode_tensors(body: bytes, header_length: int | None, sig: ModelSignature, max_rows: int) -> InferCall:
    """A request for a model with named tensor inputs: each input by name, datatype and shape checked."""
    request, binary = _split_request(body, header_length)
    if not request.inputs:
        raise no_inputs(sig)
    return InferCall(named_tensors(request.inputs, _json_reader(binary), sig, max_rows), request.id,
                     *_wanted_outputs(request, sig))


def named_tensors(inputs: Sequence[TensorHead], read: ValueReader, sig: ModelSignature, max_rows: int
                  ) -> tuple[np.ndarray, ...]:
    """The arrays of a model with named tensor inputs, one per signature input in its order: each sent
    tensor matched by name, its datatype, shape and values checked, batch sizes agreeing."""
    _check_declared_rows(inputs, max_rows)
    by_name: dict[str, np.ndarray] = {}
    single = len(sig.inputs) == 1 and len(inputs) == 1
    for i, tensor in enumerate(inputs):
        index = 0 if single else next((j for j, t in enumerate(sig.inputs) if t.name == tensor.name), None)
        if index is None:
            raise InvalidInput(f"unknown input {tensor.name!r}: this model takes {describe_inputs(sig)}")
        spec = sig.inputs[index]
        if spec.name in by_name:
            raise InvalidInput(f"input {tensor.name!r} appears twice")
        values = _tensor_values(i, tensor, read, spec.datatype, sig.dtypes[index])
        _check_shape(tensor.name, values.shape, spec.shape)
        by_name[spec.name] = values
    missing = [t.name for t in sig.inputs if t.name not in by_name]
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(missing)}: this model takes {describe_inputs(sig)}")
    arrays = tuple(by_name[t.name] for t in sig.inputs)
    rows = {len(a) for a in arrays}
    if len(rows) != 1:
        raise InvalidInput(f"inputs have different batch sizes (axis 0): "
                           f"{ {t.name: len(a) for t, a in zip(sig.inputs, arrays, strict=True)} }")
    check_row_count(len(arrays[0]), max_rows)
    return arrays


_FLOAT_WIRE = frozenset({"FP16", "FP32", "FP64"})  # JSON datatypes the one-pass decode takes as they are
_FLOATS, _INTS = {"FP16", "FP32", "FP64", "BF16"}, {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                                                     "UINT64"}


def _json_bools(raw: bytes, name: str) -> np.ndarray:
    try:
        values = np.asarray(msgspec.json.decode(raw))
    except (msgspec.DecodeError, ValueError, RecursionError):
        raise InvalidInput(f"data of input {name!r} is not a (nested) list of true/false values") from None
    if values.dtype != bool:
        raise InvalidInput(f"data of input {name!r} must hold true/false values (datatype BOOL)")
    return values


def _tensor_values(index: int, tensor: TensorHead, read: ValueReader, declared: str, dtype: np.dtype) -> np.ndarray:
    """One input's values as an array of the declared dtype and the sent shape."""
    sent = tensor.datatype
    if not (sent == declared or (declared in _FLOATS and (sent in _FLOATS or sent in _INTS))
            or (declared in _INTS and sent in _INTS)):
        raise InvalidInput(f"input {tensor.name!r} has datatype {sent!r}; this model takes {declared}")
    shape = _valid_shape(tensor)
    values, _ = read(index, tensor)
    return _as_declared(tensor.name, _sized(tensor, shape, values), dtype)


def _valid_shape(tensor: TensorHead) -> list[int]:
    shape = list(tensor.shape)
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidInput(f"input {tensor.name!r} has an invalid shape {shape}")
    return shape


def _sized(tensor: TensorHead, shape: list[int], values: np.ndarray) -> np.ndarray:
    count = math.prod(shape)
    if values.size != count:
        raise InvalidInput(f"input {tensor.name!r} has shape {shape} ({count} values) but its data holds "
                           f"{values.size} values")
    return values.reshape(shape)


def _json_reader(binary: bytes | memoryview) -> ValueReader:
    """Values of JSON request tensors: in `data`, or in the binary part after the JSON (read in order)."""
    offset = 0

    def read(_index: int, tensor: InferInput) -> tuple[np.ndarray, bool]:
        nonlocal offset
        sent = tensor.datatype
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            wire = "?" if sent == "BOOL" else NUMERIC_DTYPES.get(sent)
            if wire is None:
                raise InvalidInput(f"input {tensor.name!r}: datatype {sent!r} cannot travel as binary data")
            values = binary_values(tensor, binary, offset, size, wire)
            offset += size
            return values, False
        if len(tensor.data):
            if sent == "BOOL":
                return _json_bools(bytes(tensor.data), tensor.name), False
            values, finite = _json_values(tensor)
            check_sent_integers(tensor.name, sent, values)
            return values, finite
        raise InvalidInput(f"input {tensor.name!r} has no 'data' (and no binary_data_size)")

    return read


def _as_declared(name: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if values.dtype == dtype:  # binary tensors are read-only views of the body: torch wants its own copy
        return np.array(values, order="C") if not values.flags.writeable else np.ascontiguousarray(values)
    if dtype.kind == "f":
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise InvalidInput(f"input {name!r} holds NaN or Inf: inputs must be finite")
        limit = float(np.finfo(dtype).max)
        if values.size and float(np.abs(values).max()) > limit:
            raise InvalidInput(f"input {name!r} holds values beyond the {dtype} range")
    elif dtype.kind in "iu":
        if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values == np.round(values)).all()):
            raise InvalidInput(f"input {name!r} must hold integers")
        info = np.iinfo(dtype)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise InvalidInput(f"input {name!r} holds values outside the {dtype} range [{info.min}, {info.max}]")
    return np.ascontiguousarray(values, dtype=dtype)


def _check_shape(name: str, got: tuple[int, ...], declared: list[int]) -> None:
    if len(got) != len(declared) or any(want not in (-1, n) or n == 0 for want, n in zip(declared[1:], got[1:],
                                                                                          strict=True)):
        raise InvalidInput(f"input {name!r} has shape {list(got)}; this model takes {declared} (-1: any size "
                           "of at least 1)")


def _decode_single_flat(body: bytes, sig: ModelSignature, max_rows: int) -> InferCall | None:
    """One [n, width] tensor of plain JSON numbers, decoded in one pass (the hot path). Anything else,
    including every malformed request, returns None and takes the general path, which explains it."""
    try:
        request = _flat_request.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    if len(request.inputs) != 1:
        return None
    (tensor,) = request.inputs
    shape, data = tensor.shape, tensor.data
    if (tensor.datatype not in _FLOAT_WIRE or len(shape) != 2 or shape[1] != sig.width
            or not 0 < shape[0] <= max_rows or shape[0] * shape[1] != len(data)
            or min(data) < -FLOAT32_MAX or max(data) > FLOAT32_MAX):
        return None
    return InferCall((np.array(data, dtype=np.float32).reshape(shape),), request.id, *_wanted_outputs(request, sig))


def _input_values(inputs: Sequence[TensorHead], read: ValueReader) -> tuple[list[np.ndarray], bool]:
    """Each input's values reshaped to its shape, and whether they are all known finite float32
    already (JSON numbers are finite by construction, so only float32 overflow needs a look)."""
    out = []
    checked = True
    for i, tensor in enumerate(inputs):
        if tensor.datatype not in NUMERIC_DTYPES:
            raise InvalidInput(f"input {tensor.name!r} has datatype {tensor.datatype!r}; this model takes numeric "
                               f"tensors ({', '.join(NUMERIC_DTYPES)}), preferably FP32")
        shape = _valid_shape(tensor)
        values, finite = read(i, tensor)
        checked = checked and finite
        out.append(_sized(tensor, shape, values if finite else values.astype(np.float64)))
    return out, checked


def check_sent_integers(name: str, datatype: str, values: np.ndarray) -> None:
    """JSON numbers sent as an integer datatype must be integers in its range: INT8 300 or 1.5 is a
    client's bug to report, not a value to cast."""
    if datatype not in _INTS or not values.size:
        return
    if not (values == np.floor(values)).all():
        raise InvalidInput(f"input {name!r} is {datatype} but holds values that are not integers")
    info = np.iinfo(NUMERIC_DTYPES[datatype])
    if values.min() < info.min or values.max() > info.max:
        raise InvalidInput(f"input {name!r} holds values outside the {datatype} range [{info.min}, {info.max}]")


def binary_values(tensor: TensorHead, binary: bytes | memoryview, offset: int, size: object, dtype: str,
                  what: str = "binary_data_size is") -> np.ndarray:
    """A tensor's values from raw little-endian bytes (`size` of them at `offset`), the size checked
    against its shape: Triton's binary extension over HTTP, `raw_input_contents` over gRPC."""
    if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise InvalidInput(f"input {tensor.name!r}: binary_data_size {size!r} does not fit the "
                           f"{len(binary)} bytes after the JSON header")
    count = math.prod(_valid_shape(tensor))
    itemsize = np.dtype(dtype).itemsize
    if size != count * itemsize:
        raise InvalidInput(f"input {tensor.name!r}: shape {list(tensor.shape)} of {tensor.datatype} needs "
                           f"{count * itemsize} bytes, {what} {size}")
    return np.frombuffer(binary[offset:offset + size], dtype=dtype)


def _json_values(tensor: InferInput) -> tuple[np.ndarray, bool]:
    raw = bytes(tensor.data)
    if raw.lstrip()[1:].lstrip()[:1] == b"[":
        values = _decode(_nested, raw, f"data of input {tensor.name!r}")
        try:
            return np.asarray(values, dtype=np.float64).reshape(-1), False
        except ValueError:
            raise InvalidInput(f"data of input {tensor.name!r} is a ragged nested list") from None
    flat = _decode(_flat, raw, f"data of input {tensor.name!r}")
    if flat and (min(flat) < -FLOAT32_MAX or max(flat) > FLOAT32_MAX):
        return np.asarray(flat, dtype=np.float64), False  # checked_rows locates the culprit
    return np.array(flat, dtype=np.float32), True


def _assemble(inputs: Sequence[TensorHead], tensors: list[np.ndarray], sig: ModelSignature) -> np.ndarray:
    width = sig.width
    if len(inputs) == 1 and len(tensors[0].shape) != 1:
        (tensor,), (values,) = inputs, tensors
        if values.ndim != 2 or values.shape[1] != width:
            raise InvalidInput(f"input {tensor.name!r} has shape {list(tensor.shape)}; this model takes [n, {width}] "
                               f"(features: {', '.join(sig.features)})")
        return values
    # one tensor per feature
    by_name: dict[str, np.ndarray] = {}
    for tensor, values in zip(inputs, tensors, strict=True):
        if tensor.name not in sig.features:
            raise InvalidInput(f"unknown input {tensor.name!r}: send one tensor {INPUT_NAME!r} of shape [n, {width}] "
                               f"or one tensor per feature ({', '.join(sig.features)})")
        if tensor.name in by_name:
            raise InvalidInput(f"input {tensor.name!r} appears twice")
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise InvalidInput(f"input {tensor.name!r} has shape {list(tensor.shape)}; a per-feature tensor is [n] or "
                               "[n, 1]")
        by_name[tensor.name] = values
    missing = [f for f in sig.features if f not in by_name]
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(missing)}")
    lengths = {len(v) for v in by_name.values()}
    if len(lengths) != 1:
        raise InvalidInput(f"per-feature inputs have different row counts: {sorted(lengths)}")
    return np.stack([by_name[f] for f in sig.features], axis=1)


def _wanted_outputs(request: InferRequest | FlatRequest, sig: ModelSignature) -> tuple[bool, tuple[int, ...] | None]:
    """Whether outputs travel as binary data, and which outputs were asked for (None: all)."""
    if request.outputs:
        selected = selected_outputs((o.name for o in request.outputs), sig)
        return any(bool((o.parameters or {}).get("binary_data")) for o in request.outputs), selected
    return bool((request.parameters or {}).get("binary_data_output")), None


def selected_outputs(wanted: Iterable[str], sig: ModelSignature) -> tuple[int, ...]:
    """Indices of the outputs asked for by name, in the order asked."""
    names = [t.name for t in sig.output_specs]
    selected = []
    for name in wanted:
        if name not in names:
            raise InvalidInput(f"unknown output {name!r}: this model gives {', '.join(map(repr, names))}")
        selected.append(names.index(name))
    return tuple(selected)


DATATYPE_OF = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
               "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
               "uint64": "UINT64", "bool": "BOOL"}


def output_wire(out: np.ndarray) -> tuple[str, np.ndarray]:
    """An output's OIP datatype, and the array to send (an unnamed dtype goes as FP32)."""
    datatype = DATATYPE_OF.get(out.dtype.name, "FP32")
    if datatype == "FP32" and out.dtype.name != "float32":
        out = out.astype(np.float32)
    return datatype, out


def raw_bytes(out: np.ndarray) -> bytes:
    """Flat, row-major, little-endian: the binary extension's and gRPC raw contents' layout."""
    return np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("<")).tobytes()


def encode_infer(model: str, version: int, request_id: str | None, outputs: tuple[np.ndarray, ...],
                 names: tuple[str, ...], binary: bool, selected: tuple[int, ...] | None = None
                 ) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when outputs travel as binary."""
    if len(outputs) == 1 and selected is None and not binary and outputs[0].dtype == _FLOAT32:
        out = outputs[0]  # the common case (one FP32 output as JSON): no per-output bookkeeping
        tensor = OutputTensor(names[0], "FP32", list(out.shape), out.ravel().tolist())
        return _encoder.encode(InferResponse(model, str(version), [tensor], request_id)), None
    tensors, raws = [], []
    for i in selected if selected is not None else range(len(outputs)):
        datatype, out = output_wire(outputs[i])
        if binary:
            raw = raw_bytes(out)
            raws.append(raw)
            tensors.append(OutputTensor(names[i], datatype, list(out.shape), parameters={"binary_data_size": len(raw)}))
        else:
            tensors.append(OutputTensor(names[i], datatype, list(out.shape), out.ravel().tolist()))
    header = _encoder.encode(InferResponse(model, str(version), tensors, request_id))
    if binary:
        return header + b"".join(raws), len(header)
    return header, None


def model_metadata(name: str, version: int, sig: ModelSignature, stage: str, platform: str = "pytorch"
                   ) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [str(version)],
        "platform": platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in sig.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in sig.output_specs],
        "parameters": {"features": list(sig.features), "output_kind": sig.output_kind, "classes": list(sig.classes),
                       "stage": stage},
    }


# -- v1 predict -------------------------------------------------------------------------------
def decode_predict(body: bytes, sig: ModelSignature, max_rows: int) -> np.ndarray:
    if not sig.tabular:
        raise InvalidInput(f"/v1 predict takes the rows of one tabular input; this model takes {describe_inputs(sig)}: "
                           "use POST /v2/models/{name}/infer")
    if len(body) > SMALL_BODY:
        _count_instances(body, max_rows)
    try:
        instances: list[Any] = _rows.decode(body).instances
        records = False
    except RecursionError:
        raise InvalidInput("malformed predict request: JSON nested too deeply") from None
    except msgspec.ValidationError as exc:
        if "got `object`" not in str(exc):
            raise InvalidInput(f"invalid predict request: {exc}") from None
        instances, records = _decode(_records, body, "predict request").instances, True
    except msgspec.DecodeError:
        instances, records = _decode(_rows, body, "predict request").instances, False  # raises InvalidInput with a hint
    check_row_count(len(instances), max_rows)
    if records:
        rows = _records_to_rows(instances, sig)
    else:
        try:
            rows = np.asarray(instances, dtype=np.float64)
        except ValueError:
            raise InvalidInput("instances have different lengths") from None
        if rows.shape[1] != sig.width:
            raise InvalidInput(f"instances have {rows.shape[1]} values; this model takes {sig.width} "
                               f"({', '.join(sig.features)})")
    return checked_rows(rows, sig.features)


class _InstanceCount(msgspec.Struct):
    instances: list[msgspec.Raw]


_instance_count = msgspec.json.Decoder(_InstanceCount)


def _count_instances(body: bytes, max_rows: int) -> None:
    """A large predict body: count its rows (skipping their values) and refuse too many before decoding them."""
    try:
        count = len(_instance_count.decode(body).instances)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return  # malformed: the full decode explains it
    check_row_count(count, max_rows)


def _records_to_rows(instances: list[dict[str, float]], sig: ModelSignature) -> np.ndarray:
    wanted = set(sig.features)
    for i, record in enumerate(instances):
        if record.keys() != wanted:
            missing = [f for f in sig.features if f not in record]
            unknown = sorted(set(record) - wanted)
            problem = f"is missing feature(s) {', '.join(missing)}" if missing else \
                f"has unknown feature(s) {', '.join(unknown)}"
            raise InvalidInput(f"instance {i} {problem}; this model takes {', '.join(sig.features)}")
    return np.array([[record[f] for f in sig.features] for record in instances], dtype=np.float64)


def encode_predict(model: str, version: int, outputs: np.ndarray) -> bytes:
    """The first output's rows (a tabular model's only output)."""
    predictions = outputs[:, 0].tolist() if outputs.ndim == 2 and outputs.shape[1] == 1 else outputs.tolist()
    return _encoder.encode(PredictResponse(predictions, model, version))


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)
