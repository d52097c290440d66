"""The gRPC side of `error_responses`: the same error types, the same messages, as gRPC status codes.

The HTTP status `error_responses.status_for` gives an error is translated here, so one table decides
what every error is and both front doors answer it alike: 400 INVALID_ARGUMENT, 404 NOT_FOUND,
503 UNAVAILABLE, 413 RESOURCE_EXHAUSTED..., with the message REST would put in `{"error": ...}`.
"""

from __future__ import annotations

import logging

import grpc  # type: ignore[import-untyped]

from inferloop.gateway.errors import InferenceFailed
from inferloop.gateway.transport.error_responses import message_for, status_for

log = logging.getLogger("inferloop.gateway")

CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,  # a version that failed to load: another may, retrying can help
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(exc: BaseException, method: str) -> tuple[int, grpc.StatusCode, str]:
    """The HTTP status REST would answer (for the request counter), the gRPC code and the message."""
    status = status_for(exc)
    if status == 500 and not isinstance(exc, InferenceFailed):
        log.error("unhandled error on gRPC %s", method, exc_info=exc)
    return status, CODES.get(status, grpc.StatusCode.UNKNOWN), message_for(exc, status)
