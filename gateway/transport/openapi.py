"""The gateway's OpenAPI 3.1 document, served at `GET /openapi.json`.

The route handlers read raw bodies (msgspec decodes them straight from bytes), so Litestar's own
schema generation would see no request bodies; this document is built instead from the very
structs the handlers decode and encode, so it cannot drift from them. Only the OIP input tensor is
written by hand: its `data` is any JSON (decoded once its datatype and shape are known). Built once
per app, off the request path. Clients, API explorers and the fuzz tests
(tests/test_faults_input.py) read it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from inferloop.gateway.transport.admin_bodies import PromoteBody, RollbackBody, SamplingBody
from inferloop.gateway.transport.protocol import (
    InferResponse,
    PredictRecords,
    PredictResponse,
    PredictRows,
    RequestedOutput,
)

REF = "#/components/schemas/{name}"
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_INFER_INPUT = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "examples": ["FP32"]},
        "data": {"description": "row-major values, flat or nested; or absent with parameters.binary_data_size"},
        "parameters": {"anyOf": [{"type": "object"}, {"type": "null"}]},
    },
    "required": ["name", "shape", "datatype"],
}
_INFER_REQUEST = {
    "type": "object",
    "properties": {
        "inputs": {"type": "array", "items": {"$ref": REF.format(name="InferInput")}},
        "id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "outputs": {"anyOf": [{"type": "array", "items": {"$ref": REF.format(name="RequestedOutput")}},
                              {"type": "null"}]},
        "parameters": {"anyOf": [{"type": "object"}, {"type": "null"}]},
    },
    "required": ["inputs"],
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def _op(summary: str, ok: dict[str, Any], *, body: dict[str, Any] | None = None, admin: bool = False,
        name: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": ok},
                                                            "default": {"description": "error",
                                                                        "content": _json(_ref("Error"))}}}
    if name:
        op["parameters"] = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    if admin:
        op["security"] = [{"bearer": []}]
    return op


def openapi_document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [PredictRows, PredictRecords, PredictResponse, InferResponse, RequestedOutput, PromoteBody, RollbackBody,
         SamplingBody], ref_template=REF)
    components.update(InferInput=_INFER_INPUT, InferRequest=_INFER_REQUEST, Error=_ERROR)
    obj = {"type": "object"}
    infer_ok = {**_json(_ref("InferResponse")), "application/octet-stream": {"schema": {"type": "string"}}}
    models = "/v2/models/{name}"
    admin = "/admin/models/{name}"
    return {
        "openapi": "3.1.0",
        "info": {"title": "inferloop gateway", "version": "0.1.0"},
        "paths": {
            f"{models}/infer": {"post": _op("Open Inference Protocol v2 inference", infer_ok,
                                            body=_ref("InferRequest"))},
            "/v1/models/{name}/predict": {"post": _op("v1 predict", _json(_ref("PredictResponse")),
                                                      body={"anyOf": [_ref("PredictRows"), _ref("PredictRecords")]})},
            "/v2/health/live": {"get": _op("liveness", _json(obj), name=False)},
            "/v2/health/ready": {"get": _op("readiness", _json(obj), name=False)},
            "/v2": {"get": _op("server metadata", _json(obj), name=False)},
            models: {"get": _op("model metadata", _json(obj))},
            f"{models}/ready": {"get": _op("model readiness", _json(obj))},
            "/metrics": {"get": _op("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}},
                                    name=False)},
            f"{admin}/promote": {"post": _op("move a stage pointer", _json(obj), body=_ref("PromoteBody"),
                                             admin=True)},
            f"{admin}/rollback": {"post": _op("roll a stage back", _json(obj), body=_ref("RollbackBody"),
                                              admin=True)},
            admin: {"get": _op("stages, slots, swaps and errors", _json(obj), admin=True)},
            f"{admin}/shadow": {"get": _op("shadow report", _json(obj), admin=True),
                                "post": _op("set the shadow sampling rate", _json(obj), body=_ref("SamplingBody"),
                                            admin=True)},
            f"{admin}/drift": {"get": _op("drift state", _json(obj), admin=True)},
        },
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
