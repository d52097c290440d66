"""`--admin-port`: the admin API on a listener of its own, so a firewall or a security group can keep
it off the network that sends inference traffic. With it set, `/admin/...` on any other listener is
answered 404 as an unknown route; everything else (inference, health, metadata, metrics) is served
on both. Without it (the default, which the demo uses) everything shares the public port."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException

from inferloop.gateway.transport.error_responses import error_parts

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send


class AdminOnlyOn:
    """ASGI: pass every request on to `app`, except /admin arriving on a port other than `port`."""

    def __init__(self, port: int, app: ASGIApp) -> None:
        self.port = port
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["path"].startswith("/admin"):  # a str enum: equals "http"
            server = scope.get("server")
            if server is None or server[1] != self.port:
                status, headers, body = error_parts(NotFoundException(), scope)
                raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
                raw += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
        await self.app(scope, receive, send)
