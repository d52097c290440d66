"""The Open Inference Protocol v2 over gRPC: `inference.GRPCInferenceService` on `grpc.aio`, on the
same `DataPlane` (and event loop) as REST.

A gRPC inference takes the REST path's steps in the same order, through the same parts: the model
(`DataPlane.served`), its signature, the decode and its checks (`grpc_codec` over `protocol`), the
batcher (`DataPlane.infer`: batching, hot swap, shadow mirroring and drift observation happen there,
whatever the protocol), the answer, the request counter. Errors are `grpc_errors`' translation of
`error_responses`' statuses, with REST's messages.

The service is registered by hand rather than from generated `_pb2_grpc` stubs: requests arrive as
bytes and are parsed here, so a malformed message is INVALID_ARGUMENT (grpc's own deserializer would
answer INTERNAL), and parsing is counted in the request's time like REST's decode.

Limits, as the REST front door has its own (`http_guard`): the largest message is --max-body-bytes
(grpc answers RESOURCE_EXHAUSTED before reading more), concurrent streams per connection, RPCs in
progress in all (beyond: RESOURCE_EXHAUSTED), keepalive pings and a floor on clients' ping rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from inferloop.gateway.errors import InvalidInput, UnknownModel
from inferloop.gateway.metrics import UNKNOWN_MODEL
from inferloop.gateway.transport.grpc_codec import decode_request, encode_response
from inferloop.gateway.transport.grpc_errors import grpc_status
from inferloop.gateway.transport.grpc_messages import pb
from inferloop.gateway.transport.headers import MAX_REQUEST_ID, new_request_id

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from inferloop.gateway.serving.dataplane import DataPlane

log = logging.getLogger("inferloop.gateway")

SERVICE = "inference.GRPCInferenceService"
ROLE = "primary"
SERVER_NAME, SERVER_VERSION = "inferloop", "0.1.0"


def _request_id(context: grpc.aio.ServicerContext[Any, Any], request_id: str) -> str:
    """The client's `x-request-id` metadata, else the request's `id`, else a new one (as REST's header)."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and len(value) <= MAX_REQUEST_ID and value.isascii():
            return value
    if request_id and len(request_id) <= MAX_REQUEST_ID and request_id.isascii():
        return request_id
    return new_request_id()


def _parse(kind: type[Message], body: bytes) -> Any:
    try:
        return kind.FromString(body)
    except DecodeError as exc:
        raise InvalidInput(f"malformed {kind.__name__}: {exc}") from None


class InferenceService:
    """The six RPCs. Each takes the request's bytes and returns the answer message (or aborts)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.max_rows = plane.settings.server.max_request_rows
        self.accepting = False  # false before start and while draining: ServerReady says not ready

    async def server_live(self, body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return pb.ServerReadyResponse(ready=self.accepting and self.plane.ready())

    async def server_metadata(self, body: bytes, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    async def model_ready(self, body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = _parse(pb.ModelReadyRequest, body)
            ready = self.plane.model_ready(request.name)  # an unknown model: NOT_FOUND, as REST's 404
            if request.version:  # another version than the serving one is not ready here
                ready = ready and request.version == str(self.plane.served(request.name).primary.serving_version)
            return pb.ModelReadyResponse(ready=ready)
        except Exception as exc:  # noqa: BLE001 - answered as a status, never raised into grpc
            await self._abort(context, exc, "ModelReady")
            raise  # unreachable: abort raises

    async def model_metadata(self, body: bytes, context: grpc.aio.ServicerContext[Any, Any]
                             ) -> Any:
        try:
            request = _parse(pb.ModelMetadataRequest, body)
            self._check_version(request.name, request.version)
            _version, meta = self.plane.metadata(request.name)
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc, "ModelMetadata")
            raise
        response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for field in ("inputs", "outputs"):
            for t in meta[field]:
                getattr(response, field).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    async def model_infer(self, body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        plane = self.plane
        name = ""
        try:
            request = _parse(pb.ModelInferRequest, body)
            name = request.model_name
            model = plane.served(name)
            self._check_version(name, request.model_version)
            request_id = _request_id(context, request.id)
            call = decode_request(request, plane.signature(model), self.max_rows)
            prediction = await plane.infer(model, call.inputs, request_id)
            response = encode_response(name, prediction, call)
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc, "ModelInfer", name, started)
            raise
        context.set_trailing_metadata((("x-request-id", request_id), ("x-model-version", str(prediction.version))))
        plane.metrics.count_request(name, ROLE, 200, time.perf_counter() - started)
        plane.metrics.count_grpc(name, "OK")
        return response

    def _check_version(self, name: str, version: str) -> None:
        """A request for a named version: the serving one, or NOT_FOUND (one version serves at a time)."""
        if not version:
            return
        serving = self.plane.served(name).primary.serving_version
        if serving is not None and version != str(serving):
            raise UnknownModel(f"model {name!r} version {version} is not served: this gateway serves version "
                               f"{serving} (leave model_version empty for the serving one)")

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str,
                     name: str | None = None, started: float | None = None) -> None:
        status, code, message = grpc_status(exc, method)
        if started is not None and name is not None:
            plane = self.plane
            model = name if name in plane.models else UNKNOWN_MODEL
            plane.metrics.count_request(model, ROLE, status, time.perf_counter() - started)
            plane.metrics.count_grpc(model, code.name)
        await context.abort(code, message)


def _handler(behavior: Callable[[bytes, Any], Awaitable[Message]]) -> grpc.RpcMethodHandler:
    # no request deserializer: the method parses (see the module docstring)
    return grpc.unary_unary_rpc_method_handler(behavior, response_serializer=lambda m: m.SerializeToString())


class GrpcListener:
    """The gRPC server of one gateway app: started and stopped by its lifespan (`grpc_lifespan`)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.service = InferenceService(plane)
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None  # the bound port, once started (--grpc-port 0 picks one)

    def options(self) -> list[tuple[str, int]]:
        server = self.plane.settings.server
        return [
            ("grpc.max_receive_message_length", server.max_body_bytes),
            ("grpc.max_send_message_length", -1),  # answers are bounded by the row limit
            ("grpc.max_concurrent_streams", server.grpc_max_streams),
            ("grpc.keepalive_time_ms", int(server.grpc_keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", int(server.grpc_min_ping_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener sharing it
        ]

    async def start(self) -> None:
        settings = self.plane.settings.server
        assert settings.grpc_port is not None
        server = grpc.aio.server(options=self.options(), maximum_concurrent_rpcs=settings.grpc_max_rpcs)
        s = self.service
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "ServerLive": _handler(s.server_live), "ServerReady": _handler(s.server_ready),
            "ModelReady": _handler(s.model_ready), "ServerMetadata": _handler(s.server_metadata),
            "ModelMetadata": _handler(s.model_metadata), "ModelInfer": _handler(s.model_infer),
        }),))
        host = settings.grpc_host or settings.host
        address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address} (--grpc-port): {exc}") from None
        await server.start()
        self.server = server
        self.service.accepting = True
        log.info("OIP v2 gRPC (%s) on %s:%d", SERVICE, host, self.port)

    async def stop(self) -> None:
        """Refuse new RPCs and let those in flight finish (up to --graceful-timeout)."""
        self.service.accepting = False
        if self.server is not None:
            await self.server.stop(self.plane.settings.server.graceful_timeout_s)
            self.server = None
