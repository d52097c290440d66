"""Gateway errors. Like the registry's, they carry no HTTP: `inferloop.gateway.transport.error_responses` maps them.

    GatewayError
    ├── InvalidInput          a request we cannot run: malformed body, wrong shape or datatype, NaN/Inf
    ├── RequestTimeout        the body did not arrive within the body timeout (a slow or stalled client)
    ├── ClientDisconnected    the client hung up before sending its whole body
    ├── BodyTooLarge          a body over the configured limit (refused before it is read in full)
    ├── MethodNotAllowed      a method the route does not take (the inference routes take POST)
    ├── UnsupportedMediaType  a Content-Type other than JSON (or the binary tensor extension)
    ├── HeadersTooLarge       request headers over --max-header-bytes or --max-headers (or a request line over the first)
    ├── UnsupportedCoding     a Transfer-Encoding other than chunked (gzip, deflate...): not decoded, so refused
    ├── TooManyConnections    a new connection while --max-connections are open and none is idle
    ├── UnknownModel          a model this gateway is not configured to serve
    ├── ModelNotReady         a configured model with no version loaded for the stage (yet)
    ├── AdminDisabled         no admin token is configured, so admin calls are refused
    ├── Unauthorized          a missing or wrong bearer token
    ├── LoadFailed            a version could not be fetched, loaded or warmed up (never served)
    └── InferenceFailed       the forward pass itself failed: a server fault, not the request's
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error raised by the gateway's own code."""


class InvalidInput(GatewayError, ValueError):
    pass


class UnsupportedMediaType(GatewayError):
    pass


class RequestTimeout(GatewayError):
    pass


class ClientDisconnected(GatewayError):
    pass


class BodyTooLarge(GatewayError):
    pass


class MethodNotAllowed(GatewayError):
    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class HeadersTooLarge(GatewayError):
    pass


class UriTooLong(HeadersTooLarge):
    """The request line alone is over --max-header-bytes (414 rather than 431)."""


class UnsupportedCoding(GatewayError):
    pass


class TooManyConnections(GatewayError):
    pass


class UnknownModel(GatewayError, LookupError):
    pass


class ModelNotReady(GatewayError):
    pass


class AdminDisabled(GatewayError):
    pass


class Unauthorized(GatewayError):
    pass


class LoadFailed(GatewayError):
    """`phase` says where it failed: fetch, memory, load, warmup."""

    def __init__(self, message: str, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class InferenceFailed(GatewayError):
    pass
