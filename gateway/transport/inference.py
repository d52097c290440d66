"""The two inference routes, served on raw ASGI in front of Litestar.

    POST /v2/models/{name}/infer     Open Inference Protocol v2 (JSON or binary tensors)
    POST /v1/models/{name}/predict   {"instances": ...}

These are the only routes where the framework's per-request work shows: measured on one core,
Litestar's request and response machinery cost more CPU per request than everything the gateway
itself does for a batched single-row request (header scan, decode, queueing, encode, metrics). So
`InferenceRoutes` answers them straight from ASGI messages, and hands every other request (health,
metadata, admin, metrics, unknown paths) to Litestar unchanged. Errors go through the same
`error_responses.error_parts` as Litestar's exception handler, so both paths answer alike.

By default most inference requests do not even reach ASGI: `inferloop.gateway.transport.http_protocol` calls
`InferenceRoutes.answer` from uvicorn's HTTP protocol. The ASGI route serves the rest (see there).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from litestar.enums import ScopeType

from inferloop.gateway.errors import MethodNotAllowed
from inferloop.gateway.metrics import UNKNOWN_MODEL
from inferloop.gateway.transport.error_responses import error_parts
from inferloop.gateway.transport.headers import RequestHeaders, check_json_body, read_headers
from inferloop.gateway.transport.protocol import (
    SMALL_BODY,
    InferCall,
    decode_infer,
    decode_predict,
    encode_infer,
    encode_predict,
)
from inferloop.gateway.transport.request_body import receive_body

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from inferloop.gateway.serving.batcher import Prediction
    from inferloop.gateway.serving.dataplane import DataPlane
    from inferloop.gateway.serving.slot import ModelSignature
    from inferloop.gateway.transport.request_body import BodyReader

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
    body, json_length = encode_infer(name, prediction.version, call.id, prediction.outputs, prediction.output_names,
                                     call.binary_output, call.selected)
    if json_length is None:
        return body, (), JSON
    return body, ((b"inference-header-content-length", str(json_length).encode()),), b"application/octet-stream"


def _decode_v1(body: bytes, head: RequestHeaders, sig: ModelSignature, max_rows: int) -> InferCall:
    return InferCall((decode_predict(body, sig, max_rows),), None, False)


def _respond_v1(name: str, prediction: Prediction, call: InferCall) -> Encoded:
    return encode_predict(name, prediction.version, prediction.outputs[0]), (), JSON


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


class Reply(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]  # without content-type and content-length
    media: bytes
    body: bytes


class InferenceRoutes:
    """The inference routes' logic, and the ASGI app that serves them in front of `fallback`
    (Litestar's router, for everything else). `inferloop.gateway.transport.http_protocol` calls `answer` and `refuse`
    directly from uvicorn's HTTP protocol, without ASGI."""

    def __init__(self, plane: DataPlane, bodies: BodyReader, fallback: ASGIApp) -> None:
        self.plane = plane
        self.bodies = bodies
        self.fallback = fallback
        self.max_rows = plane.settings.server.max_request_rows
        self.max_body = plane.settings.server.max_body_bytes
        self._decoder: ThreadPoolExecutor | None = None  # large bodies are decoded here, one at a time

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:  # a str enum: equal to the server's "http"
            found = match(scope["path"])
            if found is not None:
                route, name = found

                def read_body(head: RequestHeaders) -> Awaitable[bytes]:
                    return self.bodies.read(receive_body(receive, self.max_body, head.content_length))

                reply = await self.answer(route, name, scope["method"], scope["path"], scope["headers"], read_body)
                headers = reply.headers
                headers.append((b"content-type", reply.media))
                headers.append((b"content-length", str(len(reply.body)).encode()))
                await send({"type": "http.response.start", "status": reply.status, "headers": headers})
                # litestar's HTTPResponseBodyEvent requires more_body; ASGI makes it optional (default False)
                await send({"type": "http.response.body", "body": reply.body})  # type: ignore[arg-type]
                return
        await self.fallback(scope, receive, send)

    async def answer(self, route: Route, name: str, method: str, path: str, raw_headers: Iterable[tuple[bytes, bytes]],
                     read_body: Callable[[RequestHeaders], Awaitable[bytes]]) -> Reply:
        """Headers, model, body, decode, batch, encode, count: the shape of every inference request.
        Never raises: an error becomes its reply (`error_responses`)."""
        started = time.perf_counter()
        plane = self.plane
        head = None
        try:
            if method != "POST":
                raise MethodNotAllowed(f"{method} is not allowed here: send POST", "POST")
            head = read_headers(raw_headers)
            check_json_body(head.content_type, route.binary_allowed)
            model = plane.served(name)
            body = await read_body(head)
            if len(body) <= SMALL_BODY:
                call = route.decode(body, head, plane.signature(model), self.max_rows)
            else:
                call = await self._decode_aside(route, body, head, plane.signature(model))
            prediction = await plane.infer(model, call.inputs, head.request_id)
            payload, extra_headers, media = route.respond(name, prediction, call)
        except Exception as exc:  # noqa: BLE001 - every error is answered, never raised into the server
            return self.refuse(exc, name, method, path, raw_headers, head.request_id if head else None, started)
        plane.metrics.count_request(name, ROLE, 200, time.perf_counter() - started)
        return Reply(200, [(b"x-model-version", str(prediction.version).encode()),
                           (b"x-request-id", head.request_id.encode()), *extra_headers], media, payload)

    async def _decode_aside(self, route: Route, body: bytes, head: RequestHeaders, sig: ModelSignature) -> InferCall:
        """Decode a large body on a worker thread, so the event loop keeps answering other requests
        between msgspec's calls (each holds the GIL for its own duration; the largest, skipping an
        8 MiB body's values to check its shape, takes milliseconds). One thread: large decodes run
        one at a time, so their memory does not add up."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(1, thread_name_prefix="inferloop-decode")
        return await asyncio.get_running_loop().run_in_executor(self._decoder, route.decode, body, head, sig,
                                                                self.max_rows)

    def refuse(self, exc: BaseException, name: str, method: str, path: str, raw_headers: Iterable[tuple[bytes, bytes]],
               request_id: str | None, started: float) -> Reply:
        """The error reply to an inference request, counted."""
        scope: dict[str, object] = {"method": method, "path": path, "headers": raw_headers}
        if request_id is not None:
            scope["inferloop.request_id"] = request_id
        status, headers, payload = error_parts(exc, scope)
        plane = self.plane
        plane.metrics.count_request(name if name in plane.models else UNKNOWN_MODEL, ROLE, status,
                                    time.perf_counter() - started)
        return Reply(status, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()], JSON, payload)
