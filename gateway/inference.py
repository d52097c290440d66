"""The two inference routes, served on raw ASGI in front of Litestar.

    POST /v2/models/{name}/infer     Open Inference Protocol v2 (JSON or binary tensors)
    POST /v1/models/{name}/predict   {"instances": ...}

These are the only routes where the framework's per-request work shows: measured on one core,
Litestar's request and response machinery cost more CPU per request than everything the gateway
itself does for a batched single-row request (header scan, decode, queueing, encode, metrics). So
`InferenceRoutes` answers them straight from ASGI messages, and hands every other request (health,
metadata, admin, metrics, unknown paths) to Litestar unchanged. Errors go through the same
`error_responses.error_parts` as Litestar's exception handler, so both paths answer alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from .error_responses import error_parts
from .errors import MethodNotAllowed
from .headers import RequestHeaders, check_json_body, read_headers
from .metrics import UNKNOWN_MODEL
from .protocol import InferCall, decode_infer, decode_predict, encode_infer, encode_predict
from .request_body import receive_body

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from .batcher import Prediction
    from .dataplane import DataPlane
    from .request_body import BodyReader
    from .slot import ModelSignature

ROLE = "primary"
JSON = b"application/json"
Encoded = tuple[bytes, Sequence[tuple[bytes, bytes]], bytes]  # body, extra headers, media type


class Route(NamedTuple):
    binary_allowed: bool
    decode: Callable[[bytes, RequestHeaders, ModelSignature, int], InferCall]
    respond: Callable[[str, Prediction, InferCall], Encoded]


def _decode_v2(body: bytes, head: RequestHeaders, sig: ModelSignature, max_rows: int) -> InferCall:
    return decode_infer(body, head.header_length, sig, max_rows)


def _respond_v2(name: str, prediction: Prediction, call: InferCall) -> Encoded:
    body, json_length = encode_infer(name, prediction.version, call.id, prediction.outputs, call.binary_output)
    if json_length is None:
        return body, (), JSON
    return body, ((b"inference-header-content-length", str(json_length).encode()),), b"application/octet-stream"


def _decode_v1(body: bytes, head: RequestHeaders, sig: ModelSignature, max_rows: int) -> InferCall:
    return InferCall(decode_predict(body, sig, max_rows), None, False)


def _respond_v1(name: str, prediction: Prediction, call: InferCall) -> Encoded:
    return encode_predict(name, prediction.version, prediction.outputs), (), JSON


V2_INFER = Route(True, _decode_v2, _respond_v2)
V1_PREDICT = Route(False, _decode_v1, _respond_v1)


def match(path: str) -> tuple[Route, str] | None:
    """The inference route and model name for `path`, or None for every other path. A name is one
    non-empty path segment, as in Litestar's `{name:str}`; one trailing slash is ignored, as there."""
    if path.endswith("/") and len(path) > 1:
        path = path[:-1]
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        route, name = V2_INFER, path[11:-6]
    elif path.startswith("/v1/models/") and path.endswith("/predict"):
        route, name = V1_PREDICT, path[11:-8]
    else:
        return None
    if not name or "/" in name:
        return None
    return route, name


class InferenceRoutes:
    """ASGI app: the inference routes here, everything else to `fallback` (Litestar's router)."""

    def __init__(self, plane: DataPlane, bodies: BodyReader, fallback: ASGIApp) -> None:
        self.plane = plane
        self.bodies = bodies
        self.fallback = fallback
        self.max_rows = plane.settings.server.max_request_rows
        self.max_body = plane.settings.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = match(scope["path"])
            if found is not None:
                await self.serve(*found, scope, receive, send)
                return
        await self.fallback(scope, receive, send)

    async def serve(self, route: Route, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Headers, model, body, decode, batch, encode, count: the shape of every inference request."""
        started = time.perf_counter()
        plane = self.plane
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed here: send POST", "POST")
            head = read_headers(scope["headers"])
            scope["inferloop.request_id"] = head.request_id  # type: ignore[typeddict-unknown-key]
            check_json_body(head.content_type, route.binary_allowed)
            model = plane.served(name)
            body = await self.bodies.read(receive_body(receive, self.max_body, head.content_length))
            call = route.decode(body, head, plane.signature(model), self.max_rows)
            prediction = await plane.infer(model, call.rows, head.request_id)
            payload, extra_headers, media = route.respond(name, prediction, call)
        except Exception as exc:  # noqa: BLE001 - every error is answered, never raised into the server
            status, error_headers, payload = error_parts(exc, scope)
            plane.metrics.count_request(name if name in plane.models else UNKNOWN_MODEL, ROLE, status,
                                        time.perf_counter() - started)
            headers = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in error_headers.items()]
            await _respond(send, status, payload, JSON, headers)
            return
        plane.metrics.count_request(name, ROLE, 200, time.perf_counter() - started)
        await _respond(send, 200, payload, media, [(b"x-model-version", str(prediction.version).encode()),
                                                   (b"x-request-id", head.request_id.encode()), *extra_headers])


async def _respond(send: Send, status: int, body: bytes, media: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-type", media))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
