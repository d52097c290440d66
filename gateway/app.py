"""The Litestar app factory. Everything an app owns hangs off its `DataPlane` (`app.state.plane`)
and its own Prometheus registry, so two apps in one process (tests) share nothing."""

from __future__ import annotations

from typing import Any

import uvicorn
from litestar import Litestar

from inferloop.gateway.assembly import assemble
from inferloop.gateway.lifespan import grpc_listener, lifespans
from inferloop.gateway.metrics import GatewayMetrics
from inferloop.gateway.serving.device import DeviceMemory
from inferloop.gateway.settings import GatewaySettings
from inferloop.gateway.transport.admin_auth import AdminGuard
from inferloop.gateway.transport.admin_listener import AdminOnlyOn
from inferloop.gateway.transport.endpoints import build_routes
from inferloop.gateway.transport.error_responses import error_response
from inferloop.gateway.transport.inference import InferenceRoutes
from inferloop.gateway.transport.request_body import BodyReader


def create_app(settings: GatewaySettings, *, memory: DeviceMemory | None = None) -> Litestar:
    """`memory` reports a device's free bytes; tests pass one with a small budget to exercise the
    memory-safe swap order on machines without a GPU."""
    metrics = GatewayMetrics()
    plane, parts = assemble(settings, metrics, memory)
    metrics.add_live_state(plane.live_state)
    bodies = BodyReader(settings.server.body_timeout_s)
    managers = lifespans(plane, parts)
    grpc = None
    if settings.server.grpc_port is not None:  # grpc loads only when asked for
        from inferloop.gateway.transport.grpc_service import GrpcListener

        grpc = GrpcListener(plane)
        managers.append(grpc_listener(grpc))
    app = Litestar(
        route_handlers=build_routes(plane, AdminGuard(settings.server.admin_token), bodies),
        lifespan=managers,
        exception_handlers={Exception: error_response},
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
    app.state.plane = plane
    app.state.grpc = grpc  # its `port` once started
    app.state.change_feed = parts.change_feed
    # the inference routes answer before Litestar's router (see inferloop.gateway.transport.inference);
    # Litestar still runs the lifespan and every other route
    routes = app.asgi_handler
    if settings.server.admin_port is not None:  # /admin only on its own listener
        routes = AdminOnlyOn(settings.server.admin_port, routes)
    app.asgi_handler = app.state.inference = InferenceRoutes(plane, bodies, routes)
    return app


def uvicorn_config(app: Litestar, settings: GatewaySettings, **options: Any) -> uvicorn.Config:
    """How every gateway runs under uvicorn (the CLI and the tests): uvloop, httptools with the
    connection limits of `http_guard`, and the inference routes answered in the HTTP protocol unless
    `http_fast_path` is off."""
    from inferloop.gateway.transport.http_guard import ConnectionGuard, guarded_protocol

    server = settings.server
    guard = ConnectionGuard(server, app.state.plane.metrics)
    http: Any = None
    if server.http_fast_path and not server.access_log:  # the fast path writes no access log lines
        from inferloop.gateway.transport.http_protocol import protocol_for

        http = protocol_for(app.state.inference, guard)
    options = {"loop": "uvloop", "http": http or guarded_protocol(guard), "lifespan": "on",
               "access_log": server.access_log, "log_level": server.log_level, "timeout_graceful_shutdown": server.graceful_timeout_s, **options}
    return uvicorn.Config(app, **options)
