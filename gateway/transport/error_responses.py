"""The one place where errors become HTTP: status codes for domain errors (gateway and registry),
bodies in the Open Inference Protocol's error shape `{"error": "..."}`.

Framework errors (unknown route, wrong method, body over the size limit) and the HTTP protocol's
own refusals (header limits, header timeout, transfer codings, connection limit:
`inferloop.gateway.transport.http_guard`) get the same shape, so a client never has to parse two
kinds of error body. Unexpected exceptions are logged with their
traceback and answered 500 without internal detail. `error_parts` builds the answer; Litestar's
exception handler (`error_response`) and the raw ASGI inference routes (`inferloop.gateway.transport.inference`) both
send what it builds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from litestar import Response
from litestar.exceptions import HTTPException

from inferloop.gateway.errors import (
    AdminDisabled,
    BodyTooLarge,
    ClientDisconnected,
    HeadersTooLarge,
    InferenceFailed,
    InvalidInput,
    LoadFailed,
    MethodNotAllowed,
    ModelNotReady,
    RequestTimeout,
    TooManyConnections,
    Unauthorized,
    UnknownModel,
    UnsupportedCoding,
    UnsupportedMediaType,
    UriTooLong,
)
from inferloop.gateway.transport.headers import request_id_of
from inferloop.gateway.transport.protocol import encode
from inferloop.registry import (
    Conflict,
    CorruptArtifact,
    InvalidName,
    NotFound,
    Unavailable,
    UnsupportedArtifact,
)

if TYPE_CHECKING:
    from litestar import Request
    from litestar.datastructures import State

log = logging.getLogger("inferloop.gateway")
BODY_TOO_LARGE = "request body is larger than the configured limit (--max-body-bytes)"

STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInput, 400),
    (InvalidName, 400),
    (UnsupportedArtifact, 400),
    (Unauthorized, 401),
    (AdminDisabled, 403),
    (UnknownModel, 404),
    (NotFound, 404),
    (MethodNotAllowed, 405),
    (RequestTimeout, 408),
    (Conflict, 409),
    (BodyTooLarge, 413),
    (UriTooLong, 414),
    (UnsupportedMediaType, 415),
    (HeadersTooLarge, 431),
    (ClientDisconnected, 499),  # nginx's "client closed request": nobody reads the answer, it is only counted
    (InferenceFailed, 500),
    (UnsupportedCoding, 501),
    (LoadFailed, 502),
    (CorruptArtifact, 502),
    (ModelNotReady, 503),
    (Unavailable, 503),
    (TooManyConnections, 503),
)


def status_for(exc: BaseException) -> int:
    if isinstance(exc, HTTPException):
        return exc.status_code
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def message_for(exc: BaseException, status: int) -> str:
    if status == 413:
        return BODY_TOO_LARGE
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    if status == 500 and not isinstance(exc, InferenceFailed):
        return "internal server error"
    return str(exc)


def error_parts(exc: BaseException, scope: Mapping[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the answer to `exc`, raised while serving `scope` (an ASGI scope, or
    the method/path/headers mapping the inference routes build)."""
    status = status_for(exc)
    if status == 500 and not isinstance(exc, InferenceFailed):
        log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
    headers = {"x-request-id": request_id_of(scope)}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="inferloop-admin"'
    elif status in (408, 413, 414, 431, 501):  # the client may still be sending: close rather than read on
        headers["connection"] = "close"
    elif isinstance(exc, TooManyConnections):
        headers["connection"] = "close"
        headers["retry-after"] = "1"
    if isinstance(exc, MethodNotAllowed):
        headers["allow"] = exc.allow
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)
    return status, headers, encode({"error": message_for(exc, status)})


def error_response(request: Request[Any, Any, State], exc: Exception) -> Response[bytes]:
    """Litestar exception handler for every exception type."""
    status, headers, body = error_parts(exc, request.scope)
    return Response(body, status_code=status, headers=headers, media_type="application/json")
