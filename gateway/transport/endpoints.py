"""Route handlers: translate HTTP to `DataPlane` calls and back, nothing more. The inference routes
are not here: they run on raw ASGI in front of Litestar (`inferloop.gateway.transport.inference`).

Handlers take the raw `Request` and read the body bytes themselves (msgspec decodes straight from
them), and answer with pre-encoded bytes, so the framework does no per-request model parsing or
serialisation. Errors propagate to `error_responses`; the handlers only count them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.response.base import ASGIResponse

from inferloop.gateway.errors import InvalidInput
from inferloop.gateway.transport.admin_bodies import PromoteBody, RollbackBody, SamplingBody
from inferloop.gateway.transport.headers import read_headers
from inferloop.gateway.transport.openapi import openapi_document
from inferloop.gateway.transport.protocol import encode

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from inferloop.gateway.serving.dataplane import DataPlane
    from inferloop.gateway.transport.admin_auth import AdminGuard
    from inferloop.gateway.transport.request_body import BodyReader

# Resolved at runtime by Litestar (handler signatures), so these names are real imports, not TYPE_CHECKING.
AnyRequest = Request[Any, Any, State]  # no auth middleware: user and auth are unused
_T = TypeVar("_T")

JSON = "application/json"
SERVER_METADATA = encode({"name": "inferloop", "version": "0.1.0", "extensions": ["binary_tensor_data"]})


def _json(body: bytes, status: int = 200, headers: list[tuple[str, str]] | None = None) -> ASGIResponse:
    return ASGIResponse(body=body, status_code=status, headers=headers, media_type=JSON)


def _decode_admin(body: bytes, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(f"invalid admin request: {exc}") from None


def build_routes(plane: DataPlane, guard: AdminGuard, bodies: BodyReader) -> list[HTTPRouteHandler]:
    metrics = plane.metrics

    # -- health and metadata ------------------------------------------------------------------
    @get("/v2/health/live")
    async def live() -> ASGIResponse:
        return _json(b'{"live":true}')

    @get("/v2/health/ready")
    async def ready() -> ASGIResponse:
        ok = plane.ready()
        body: dict[str, object] = {"ready": ok, "models": plane.serving_versions()}
        if missing := plane.missing_models():
            body["detail"] = "; ".join(f"model {m!r} does not exist in the registry" for m in missing)
        return _json(encode(body), 200 if ok else 503)

    @get("/v2")
    async def server_metadata() -> ASGIResponse:
        return _json(SERVER_METADATA)

    @get("/v2/models/{name:str}")
    async def model_metadata(request: AnyRequest) -> ASGIResponse:
        name = request.path_params["name"]
        version, meta = plane.metadata(name)
        return _json(encode(meta), headers=[("x-model-version", str(version))])

    @get("/v2/models/{name:str}/ready")
    async def model_ready(request: AnyRequest) -> ASGIResponse:
        name = request.path_params["name"]
        ok = plane.model_ready(name)
        return _json(encode({"name": name, "ready": ok}), 200 if ok else 503)

    api_document = encode(openapi_document())

    @get("/openapi.json")
    async def openapi() -> ASGIResponse:
        return _json(api_document)

    @get("/metrics")
    async def prometheus() -> ASGIResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        # the header given whole: with media_type, Litestar appends its own "; charset=utf-8" to the
        # charset prometheus_client's type already carries
        return ASGIResponse(body=generate_latest(metrics.registry), headers={"content-type": CONTENT_TYPE_LATEST})

    # -- admin --------------------------------------------------------------------------------
    def admin_actor(request: AnyRequest, declared: str | None) -> str:
        client = request.client.host if request.client else "unknown"
        return f"{declared or 'admin'} via gateway from {client}"

    def authorize(request: AnyRequest) -> None:
        guard.check(read_headers(request.scope["headers"]).authorization)

    @post("/admin/models/{name:str}/promote", status_code=200)
    async def promote(request: AnyRequest) -> ASGIResponse:
        authorize(request)
        name = request.path_params["name"]
        body: PromoteBody = _decode_admin(await bodies.read(request.body()), PromoteBody)
        result = await plane.promote(name, body.version, body.stage, reason=body.reason,
                                     actor=admin_actor(request, body.actor), expected_version=body.expected_version)
        return _json(encode(result))

    @post("/admin/models/{name:str}/rollback", status_code=200)
    async def rollback(request: AnyRequest) -> ASGIResponse:
        authorize(request)
        name = request.path_params["name"]
        body: RollbackBody = _decode_admin(await bodies.read(request.body()), RollbackBody)
        result = await plane.rollback(name, body.stage, to_version=body.to_version, reason=body.reason,
                                      actor=admin_actor(request, body.actor))
        return _json(encode(result))

    @get("/admin/models/{name:str}")
    async def admin_status(request: AnyRequest) -> ASGIResponse:
        authorize(request)
        return _json(encode(plane.status(request.path_params["name"])))

    @get("/admin/models/{name:str}/shadow")
    async def shadow_report(request: AnyRequest) -> ASGIResponse:
        authorize(request)
        return _json(encode(plane.shadow_report(request.path_params["name"])))

    @post("/admin/models/{name:str}/shadow", status_code=200)
    async def shadow_sampling(request: AnyRequest) -> ASGIResponse:
        authorize(request)
        body: SamplingBody = _decode_admin(await bodies.read(request.body()), SamplingBody)
        result = await plane.set_shadow_sample_rate(request.path_params["name"], body.sample_rate,
                                                    actor=admin_actor(request, body.actor), reason=body.reason)
        return _json(encode(result))

    @get("/admin/models/{name:str}/drift")
    async def drift_state(request: AnyRequest) -> ASGIResponse:
        authorize(request)
        return _json(encode(plane.drift_state(request.path_params["name"])))

    return [live, ready, server_metadata, model_metadata, model_ready, openapi, prometheus, promote,
            rollback, admin_status, shadow_report, shadow_sampling, drift_state]
