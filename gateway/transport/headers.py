"""The few request headers the gateway reads, taken in one pass over the raw ASGI headers (cheaper
than building a header mapping per request), and request ids."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from inferloop.gateway.errors import InvalidInput, UnsupportedMediaType

_PREFIX = os.urandom(4).hex()
_counter = itertools.count(1)
MAX_REQUEST_ID = 128


def new_request_id() -> str:
    """Unique within this process run, and across replicas with high probability; no syscall per id."""
    return f"{_PREFIX}-{next(_counter):x}"


class RequestHeaders(NamedTuple):
    request_id: str
    content_type: bytes | None
    header_length: int | None  # Inference-Header-Content-Length (binary tensor extension)
    authorization: bytes | None
    content_length: int | None  # as declared; the server has checked it is a number


def request_id_of(scope: Mapping[str, Any]) -> str:
    """The id a handler settled on (kept in the scope), else the client's, else a new one; never raises."""
    rid: str | None = scope.get("inferloop.request_id")  # set by our handlers: a str
    if rid is None:
        headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
        for key, value in headers:
            if key == b"x-request-id" and len(value) <= MAX_REQUEST_ID and value.isascii():
                return value.decode("ascii")
        rid = new_request_id()
    return rid


def read_headers(scope_headers: Iterable[tuple[bytes, bytes]]) -> RequestHeaders:
    request_id = content_type = header_length = authorization = content_length = None
    for key, value in scope_headers:
        if key == b"x-request-id":
            request_id = value
        elif key == b"content-type":
            content_type = value
        elif key == b"inference-header-content-length":
            header_length = value
        elif key == b"authorization":
            authorization = value
        elif key == b"content-length":
            content_length = value
    rid = None
    if request_id and len(request_id) <= MAX_REQUEST_ID and request_id.isascii():
        rid = request_id.decode("ascii")
    length = None
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(f"Inference-Header-Content-Length is not an integer: {header_length!r}") from None
    declared = int(content_length) if content_length is not None and content_length.isdigit() else None
    return RequestHeaders(rid or new_request_id(), content_type, length, authorization, declared)


# Read as JSON: JSON itself, and the form type that `curl -d` sends unless told otherwise (the body
# is decoded as JSON all the same, so a real form body is a 400 "malformed JSON", never run).
JSON_MEDIA = (b"application/json", b"application/x-www-form-urlencoded")


def check_json_body(content_type: bytes | None, binary_allowed: bool) -> None:
    """JSON bodies only (or octet-stream for the binary tensor extension). A missing Content-Type is
    accepted, as Triton does: its own client sends none; so is curl's default form type."""
    if content_type is None:
        return
    media = content_type.split(b";", 1)[0].strip().lower()
    if media in JSON_MEDIA or (binary_allowed and media == b"application/octet-stream"):
        return
    raise UnsupportedMediaType(f"unsupported Content-Type {content_type.decode('latin-1')!r}: send application/json "
                               "(curl: -H 'Content-Type: application/json')"
                               + (" or application/octet-stream with Inference-Header-Content-Length"
                                  if binary_allowed else ""))
