"""Route handlers: translate HTTP to `DataPlane` calls and back, nothing more.

Handlers take the raw `Request` and read the body bytes themselves (msgspec decodes straight from
them), and answer with pre-encoded bytes, so the framework does no per-request model parsing or
serialisation. Errors propagate to `error_responses`; the handlers only count them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, get, post
from litestar.response.base import ASGIResponse

from .error_responses import status_for
from .errors import InvalidInput
from .headers import RequestHeaders, check_json_body, read_headers
from .metrics import UNKNOWN_MODEL
from .protocol import InferCall, decode_infer, decode_predict, encode, encode_infer, encode_predict

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from .admin_auth import AdminGuard
    from .batcher import Prediction
    from .dataplane import DataPlane
    from .request_body import BodyReader
    from .slot import ModelSignature

JSON = "application/json"
ROLE = "primary"
Encoded = tuple[bytes, Sequence[tuple[str, str]], str]  # body, extra headers, media type
SERVER_METADATA = encode({"name": "inferloop", "version": "0.1.0", "extensions": ["binary_tensor_data"]})


class PromoteBody(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    stage: str = "production"
    reason: str = ""
    expected_version: int | None | msgspec.UnsetType = msgspec.UNSET
    actor: str | None = None


class SamplingBody(msgspec.Struct, forbid_unknown_fields=True):
    sample_rate: float
    reason: str = ""
    actor: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError("sample_rate must be between 0 and 1")


class RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    stage: str = "production"
    reason: str = ""
    to_version: int | None = None
    actor: str | None = None


def _json(body: bytes, status: int = 200, headers: list[tuple[str, str]] | None = None) -> ASGIResponse:
    return ASGIResponse(body=body, status_code=status, headers=headers, media_type=JSON)


def _decode_admin(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(f"invalid admin request: {exc}") from None


def build_routes(plane: DataPlane, guard: AdminGuard, bodies: BodyReader) -> list[HTTPRouteHandler]:
    metrics = plane.metrics
    max_rows = plane.settings.server.max_request_rows

    async def answer(request: Request, binary_allowed: bool,
                     decode: Callable[[bytes, RequestHeaders, ModelSignature], InferCall],
                     respond: Callable[[str, Prediction, InferCall], Encoded]) -> ASGIResponse:
        """The shared shape of an inference request: headers, model, decode, batch, encode, count."""
        started = time.perf_counter()
        name = request.path_params["name"]
        scope = request.scope
        try:
            head = read_headers(scope["headers"])
            scope["inferloop.request_id"] = head.request_id  # type: ignore[typeddict-unknown-key]
            check_json_body(head.content_type, binary_allowed)
            model = plane.served(name)
            call = decode(await bodies.read(request), head, plane.signature(model))
            prediction = await plane.infer(model, call.rows, head.request_id)
            body, extra_headers, media = respond(name, prediction, call)
        except Exception as exc:
            metrics.count_request(name if name in plane.models else UNKNOWN_MODEL, ROLE, status_for(exc),
                                  time.perf_counter() - started)
            raise
        metrics.count_request(name, ROLE, 200, time.perf_counter() - started)
        headers = [("x-model-version", str(prediction.version)), ("x-request-id", head.request_id), *extra_headers]
        return ASGIResponse(body=body, headers=headers, media_type=media)

    # -- inference (hot path) -----------------------------------------------------------------
    def decode_v2(body: bytes, head: RequestHeaders, sig: ModelSignature) -> InferCall:
        return decode_infer(body, head.header_length, sig, max_rows)

    def respond_v2(name: str, prediction: Prediction, call: InferCall) -> Encoded:
        body, json_length = encode_infer(name, prediction.version, call.id, prediction.outputs, call.binary_output)
        if json_length is None:
            return body, (), JSON
        return body, (("inference-header-content-length", str(json_length)),), "application/octet-stream"

    def decode_v1(body: bytes, head: RequestHeaders, sig: ModelSignature) -> InferCall:
        return InferCall(decode_predict(body, sig, max_rows), None, False)

    def respond_v1(name: str, prediction: Prediction, call: InferCall) -> Encoded:
        return encode_predict(name, prediction.version, prediction.outputs), (), JSON

    @post("/v2/models/{name:str}/infer", status_code=200)
    async def infer(request: Request) -> ASGIResponse:
        return await answer(request, True, decode_v2, respond_v2)

    @post("/v1/models/{name:str}/predict", status_code=200)
    async def predict(request: Request) -> ASGIResponse:
        return await answer(request, False, decode_v1, respond_v1)

    # -- health and metadata ------------------------------------------------------------------
    @get("/v2/health/live")
    async def live() -> ASGIResponse:
        return _json(b'{"live":true}')

    @get("/v2/health/ready")
    async def ready() -> ASGIResponse:
        ok = plane.ready()
        return _json(encode({"ready": ok, "models": plane.serving_versions()}), 200 if ok else 503)

    @get("/v2")
    async def server_metadata() -> ASGIResponse:
        return _json(SERVER_METADATA)

    @get("/v2/models/{name:str}")
    async def model_metadata(request: Request) -> ASGIResponse:
        name = request.path_params["name"]
        version, meta = plane.metadata(name)
        return _json(encode(meta), headers=[("x-model-version", str(version))])

    @get("/v2/models/{name:str}/ready")
    async def model_ready(request: Request) -> ASGIResponse:
        name = request.path_params["name"]
        ok = plane.model_ready(name)
        return _json(encode({"name": name, "ready": ok}), 200 if ok else 503)

    from .openapi import openapi_document  # imports this module's admin bodies

    api_document = encode(openapi_document())

    @get("/openapi.json")
    async def openapi() -> ASGIResponse:
        return _json(api_document)

    @get("/metrics")
    async def prometheus() -> ASGIResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return ASGIResponse(body=generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- admin --------------------------------------------------------------------------------
    def admin_actor(request: Request, declared: str | None) -> str:
        client = request.client.host if request.client else "unknown"
        return f"{declared or 'admin'} via gateway from {client}"

    def authorize(request: Request) -> None:
        guard.check(read_headers(request.scope["headers"]).authorization)

    @post("/admin/models/{name:str}/promote", status_code=200)
    async def promote(request: Request) -> ASGIResponse:
        authorize(request)
        name = request.path_params["name"]
        body: PromoteBody = _decode_admin(await bodies.read(request), PromoteBody)
        result = await plane.promote(name, body.version, body.stage, reason=body.reason,
                                     actor=admin_actor(request, body.actor), expected_version=body.expected_version)
        return _json(encode(result))

    @post("/admin/models/{name:str}/rollback", status_code=200)
    async def rollback(request: Request) -> ASGIResponse:
        authorize(request)
        name = request.path_params["name"]
        body: RollbackBody = _decode_admin(await bodies.read(request), RollbackBody)
        result = await plane.rollback(name, body.stage, to_version=body.to_version, reason=body.reason,
                                      actor=admin_actor(request, body.actor))
        return _json(encode(result))

    @get("/admin/models/{name:str}")
    async def admin_status(request: Request) -> ASGIResponse:
        authorize(request)
        return _json(encode(plane.status(request.path_params["name"])))

    @get("/admin/models/{name:str}/shadow")
    async def shadow_report(request: Request) -> ASGIResponse:
        authorize(request)
        return _json(encode(plane.shadow_report(request.path_params["name"])))

    @post("/admin/models/{name:str}/shadow", status_code=200)
    async def shadow_sampling(request: Request) -> ASGIResponse:
        authorize(request)
        body: SamplingBody = _decode_admin(await bodies.read(request), SamplingBody)
        result = await plane.set_shadow_sample_rate(request.path_params["name"], body.sample_rate,
                                                    actor=admin_actor(request, body.actor), reason=body.reason)
        return _json(encode(result))

    @get("/admin/models/{name:str}/drift")
    async def drift_state(request: Request) -> ASGIResponse:
        authorize(request)
        return _json(encode(plane.drift_state(request.path_params["name"])))

    return [infer, predict, live, ready, server_metadata, model_metadata, model_ready, openapi, prometheus, promote,
            rollback, admin_status, shadow_report, shadow_sampling, drift_state]
