"""uvicorn's httptools protocol, with the inference routes answered without ASGI.

Measured on one core, uvicorn's ASGI plumbing (a scope dict, a request-response cycle object and a
task per request, the message dicts of `receive` and `send`, the header checks when the response
is written) costs more CPU than everything the gateway does for a batched single-row request. So for
`POST /v2/models/{name}/infer` and `POST /v1/models/{name}/predict` this protocol collects the body
from the parser's callbacks and hands it to `InferenceRoutes.answer` (the same code the ASGI route
runs), then writes the reply in one `transport.write`. Every other request, and every inference
request that is not a plain one (an `Expect: 100-continue`, an upgrade, a `root_path`), takes
uvicorn's path unchanged, as do keep-alive, pipelining order, flow control and graceful shutdown:
a `FastCycle` stands where uvicorn keeps its cycle, so uvicorn's own bookkeeping sees it.

The limits of the ASGI route hold here too: a Content-Length or a body over `--max-body-bytes`
gets 413 at once, a body slower than `--body-timeout` gets 408, a client gone mid-body is counted
499. So do the connection's (header limits, timeouts, connection cap, pipelining: the base class,
`http_guard.GuardedHttpProtocol`). A reply is written only while the transport's buffer is under its
high-water mark (uvicorn's cycle awaits `drain` the same way): a client that pipelines requests
and reads no replies has its connection paused instead of its replies piling up in memory.
`--http-fast-path off` (or `INFERLOOP_HTTP_FAST_PATH=off`) serves everything through ASGI.

This subclasses uvicorn's protocol class (`uvicorn.protocols.http.httptools_impl`, not a public
API): pyproject caps uvicorn below the first untested minor version, a uvicorn without the hook it
needs turns the fast path off (logged), and the gateway tests run the HTTP surface through both
paths (tests/test_gateway_protocol.py) and at the byte level (tests/test_gateway_http_protocol.py).
"""

from __future__ import annotations

import http
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inferloop.gateway.errors import BodyTooLarge, ClientDisconnected
from inferloop.gateway.transport.http_guard import ConnectionGuard, GuardedHttpProtocol
from inferloop.gateway.transport.inference import match

log = logging.getLogger("inferloop.gateway")

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from inferloop.gateway.transport.headers import RequestHeaders
    from inferloop.gateway.transport.inference import InferenceRoutes, Reply, Route


class _NoEvent:
    """uvicorn sets its cycle's `message_event` when the connection drops; a fast cycle has no waiter."""

    @staticmethod
    def set() -> None:
        pass


_STATUS_LINES: dict[int, bytes] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_STATUS_LINES[499] = b"HTTP/1.1 499 Client Closed Request\r\n"


class FastCycle:
    """One inference request on a connection: its body as it arrives, then its reply. It stands in
    `protocol.cycle` like uvicorn's own cycle (uvicorn reads `response_complete`, sets `keep_alive`
    on shutdown and `disconnected` when the client goes)."""

    __slots__ = ("begun", "chunks", "complete", "disconnected", "headers", "keep_alive", "name", "path", "protocol",
                 "response_complete", "route", "running", "size", "started_at", "too_large")
    message_event = _NoEvent

    def __init__(self, protocol: InferenceHttpProtocol, route: Route, name: str, path: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool, declared_length: int | None) -> None:
        self.protocol = protocol
        self.route = route
        self.name = name
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive
        self.started_at = time.perf_counter()
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = declared_length is not None and declared_length > protocol.routes.max_body
        self.complete = False  # whole body received
        self.begun = False  # first in line on its connection (earlier pipelined requests answered)
        self.running = False
        self.response_complete = False
        self.disconnected = False

    # -- driven by the protocol ---------------------------------------------------------------
    def begin(self) -> None:
        self.begun = True
        if self.too_large:
            self.refuse(BodyTooLarge("request body is over the limit"))
        elif self.complete:
            self.run()
        else:
            self.protocol.routes.bodies.watch(self, self._timed_out)

    def add_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.size += len(body)
        if self.size > self.protocol.routes.max_body:
            self.too_large = True
            self.chunks.clear()
            if self.begun:
                self.refuse(BodyTooLarge("request body is over the limit"))
            return
        self.chunks.append(body)

    def end_body(self) -> None:
        self.complete = True
        if self.begun and not self.response_complete:
            self.protocol.routes.bodies.unwatch(self)
            self.run()

    @property
    def more_body(self) -> bool:  # as uvicorn's cycle says it
        return not self.complete

    def abandon(self) -> None:
        """The connection's error answers this request (its body was cut short): write nothing."""
        self.disconnected = self.response_complete = True
        self.protocol.routes.bodies.unwatch(self)

    def lost(self) -> None:
        """The connection dropped before the reply was written."""
        self.disconnected = True
        self.protocol.routes.bodies.unwatch(self)
        if not self.complete and self.begun and not self.response_complete:
            self.response_complete = True
            routes = self.protocol.routes
            routes.refuse(ClientDisconnected("the client closed the connection before sending its whole body"),
                          self.name, "POST", self.path, self.headers, None, self.started_at)

    # -- the reply ----------------------------------------------------------------------------
    def run(self) -> None:
        if self.running or self.response_complete:
            return
        self.running = True
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        protocol = self.protocol
        task = protocol.loop.create_task(self._answer(body))
        protocol.tasks.add(task)
        task.add_done_callback(protocol.tasks.discard)

    async def _answer(self, body: bytes) -> None:
        async def read_body(_head: RequestHeaders) -> bytes:
            return body

        reply = await self.protocol.routes.answer(self.route, self.name, "POST", self.path, self.headers, read_body)
        self.write(reply)

    def _timed_out(self, _key: object) -> None:
        if not self.response_complete and not self.running:
            self.refuse(self.protocol.routes.bodies.timeout_error())

    def refuse(self, exc: BaseException) -> None:
        """Answer an error before the body is complete; the connection closes after it."""
        if self.response_complete:
            return
        self.protocol.routes.bodies.unwatch(self)
        self.keep_alive = False
        self.write(self.protocol.routes.refuse(exc, self.name, "POST", self.path, self.headers, None, self.started_at))

    def write(self, reply: Reply) -> None:
        if self.response_complete:
            return
        protocol = self.protocol
        if protocol.flow.write_paused and not self.disconnected:
            protocol.held = (self, reply)  # written when the client has read enough (resume_writing)
            return
        self.response_complete = True
        transport = protocol.transport
        if self.disconnected or transport.is_closing():
            return
        content = [_STATUS_LINES.get(reply.status) or f"HTTP/1.1 {reply.status} \r\n".encode()]
        for key, value in protocol.server_state.default_headers:
            content += (key, b": ", value, b"\r\n")
        for key, value in reply.headers:
            content += (key, b": ", value, b"\r\n")
        content += (b"content-type: ", reply.media, b"\r\ncontent-length: ", str(len(reply.body)).encode(), b"\r\n")
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", reply.body)
        transport.write(b"".join(content))
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()


# uvicorn is not followed (follow_imports=skip in pyproject), so its protocol class is Any to mypy.
class InferenceHttpProtocol(GuardedHttpProtocol):
    """`GuardedHttpProtocol` that answers plain inference requests itself (see the module docstring)."""

    routes: InferenceRoutes  # set on the subclass `protocol_for` makes
    cycle: RequestResponseCycle | FastCycle | None  # uvicorn's current cycle, or ours for a fast request
    held: tuple[FastCycle, Reply] | None = None  # a reply waiting for the client to read (write paused)

    def on_headers_complete(self) -> None:
        parser = self.parser
        if (parser.get_method() != b"POST" or self.expect_100_continue or self.root_path
                or parser.should_upgrade()):
            super().on_headers_complete()
            return
        self.in_head = False
        self.deadline = 0.0
        raw_path = httptools.parse_url(self.url).path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        found = match(path)
        if found is None:
            super().on_headers_complete()
            return
        route, name = found
        declared = None
        for key, value in self.headers:
            if key == b"content-length":
                declared = int(value) if value.isdigit() else None
        previous = self.cycle
        cycle = FastCycle(self, route, name, path, self.headers,
                          parser.get_http_version() != "1.0" and parser.should_keep_alive(), declared)
        self.cycle = cycle
        if previous is None or previous.response_complete:
            self.active = cycle
            cycle.begin()
        else:  # pipelined behind a request not answered yet: uvicorn starts it in order
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if isinstance(cycle, FastCycle):
            self.active = cycle
            cycle.begin()
        else:
            super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.add_body(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.end_body()
        else:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.lost()
        held, self.held = self.held, None
        if held is not None:
            held[0].disconnected = True
        for queued, _app in self.pipeline:
            if isinstance(queued, FastCycle):
                queued.disconnected = True
        super().connection_lost(exc)

    def resume_writing(self) -> None:
        super().resume_writing()
        held, self.held = self.held, None
        if held is not None:
            held[0].write(held[1])

    def abandon(self, cycle: Any) -> None:
        if isinstance(cycle, FastCycle):
            cycle.abandon()
        else:
            super().abandon(cycle)


def protocol_for(routes: InferenceRoutes, guard: ConnectionGuard) -> type[InferenceHttpProtocol] | None:
    """The protocol class for one app (uvicorn instantiates it per connection), or None when this
    uvicorn lacks the hook that starts pipelined requests (`_start_asgi_task`, uvicorn >= 0.41):
    then everything goes through ASGI."""
    if not callable(getattr(HttpToolsProtocol, "_start_asgi_task", None)):
        log.warning("uvicorn %s has no _start_asgi_task: the inference fast path is off (every request "
                    "goes through ASGI)", uvicorn.__version__)
        return None
    return type("InferenceHttpProtocol", (InferenceHttpProtocol,), {"routes": routes, "guard": guard})
