"""uvicorn's httptools protocol, hardened against hostile and broken clients; both inference paths
(`--http-fast-path on` subclasses this, `off` uses it as is) get the same limits.

What uvicorn's own protocol lacks, and what this adds:

- Header limits. Request line, headers and chunked trailers together are held to
  `--max-header-bytes` and `--max-headers`: 431 (414 for a request line alone over the limit). httptools
  buffers a header value until it ends, so the bytes of a head still in progress are counted as
  they are fed too, and the parser is fed at most `SLICE` bytes at a time: a 10 MB header costs at
  most the limit plus one slice.
- Trailers (the header lines after a chunked body) are counted against those limits and dropped:
  uvicorn appends them to the request's headers, where they could change its authentication,
  content type or request id after the fact.
- `Transfer-Encoding` other than plain `chunked` (`gzip, chunked`): 501. httptools de-chunks but
  would hand the compressed bytes on as the body.
- Timeouts. `--header-timeout` from a connection's start or a request's first byte to the end of
  its headers (408, closed), `--keepalive-timeout` for an idle connection between requests, and
  `--send-timeout` for a client that reads none of a reply (disconnected). One timer per server
  sweeps the connections' deadlines (a float per connection; no timer is armed per request).
- Connections. `--max-connections` per server (by default the descriptor limit minus
  `--fd-reserve`, so the registry poller and artifact files always have descriptors). At the
  limit a new connection closes the idle connection nearest its deadline to make room; with none
  idle it gets 503 and is counted (`inferloop_http_connections_refused_total`). The admin listener
  (`--admin-port`) has its own small limit, so a flood on the public port cannot lock it out.
- Pipelining. At most `--max-pipeline` requests wait behind the one being answered; then the
  connection is not read, and bytes already read are parsed once the queue drains. An error in a
  pipelined request (bad framing, a limit) is answered after the replies to the requests parsed
  before it, then the connection closes (uvicorn answers the error at once and drops those
  replies). A client that half-closes its side after sending (`shutdown(SHUT_WR)`) still gets
  every reply (uvicorn closes at end of file and drops them).

Every refusal is an `inferloop.gateway.errors` exception answered through `error_responses`, so
it has the same JSON shape as every other error. Like `http_protocol`, this relies on uvicorn's
protocol internals (pinned in pyproject; tests/test_hostile_clients.py runs every case on both
paths against a real `inferloop serve`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from inferloop.gateway.errors import (
    HeadersTooLarge,
    InvalidInput,
    RequestTimeout,
    TooManyConnections,
    UnsupportedCoding,
    UriTooLong,
)
from inferloop.gateway.transport.error_responses import error_parts

if TYPE_CHECKING:
    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.settings import ServerSettings

log = logging.getLogger("inferloop.gateway")
_now = time.monotonic

SLICE = 16 * 1024  # bytes fed to the parser at once: bounds what one feed can buffer or queue
LINGER_S = 2.0  # after an error reply, how long the client's unread bytes are read and dropped
ADMIN_CONNECTIONS = 32  # connections the admin listener accepts at most (drawn from --fd-reserve)
PUBLIC, ADMIN = "public", "admin"


def connection_limit(server: ServerSettings) -> tuple[int, str]:
    """The public listener's connection limit, and where it came from (for the start-up log line)."""
    if server.max_connections is not None:
        return server.max_connections, "--max-connections"
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - server.fd_reserve), f"descriptor limit {soft} minus --fd-reserve {server.fd_reserve}"


class ConnectionGuard:
    """What every connection of one server shares: the limits, the open connections per listener,
    the timer that closes the overdue ones, and the counters."""

    def __init__(self, server: ServerSettings, metrics: GatewayMetrics | None = None) -> None:
        self.max_header_bytes = server.max_header_bytes
        self.max_headers = server.max_headers
        self.header_timeout = server.header_timeout_s
        self.keepalive_timeout = server.keepalive_timeout_s
        self.send_timeout = server.send_timeout_s
        self.max_pipeline = server.max_pipeline
        self.admin_port = server.admin_port  # the bound port (the CLI resolves 0 before building this)
        public, origin = connection_limit(server)
        self.limits = {PUBLIC: public, ADMIN: ADMIN_CONNECTIONS}
        self.open: dict[str, set[GuardedHttpProtocol]] = {PUBLIC: set(), ADMIN: set()}
        self.tick = min(1.0, self.header_timeout / 4, self.keepalive_timeout / 4, self.send_timeout / 4)
        self._timer: asyncio.TimerHandle | None = None
        self._refused = self._closed = None
        if metrics is not None:
            self._refused = metrics.http_connections_refused
            self._closed = metrics.http_connections_closed
            for listener, group in self.open.items():
                metrics.http_connections.labels(listener).set_function(group.__len__)
        log.info("HTTP limits: %d connections (%s), %d admin; headers <= %d bytes and %d fields; header timeout "
                 "%g s, keep-alive %g s, send %g s; %d pipelined requests per connection", public, origin,
                 ADMIN_CONNECTIONS, self.max_header_bytes, self.max_headers, self.header_timeout,
                 self.keepalive_timeout, self.send_timeout, self.max_pipeline)

    def admit(self, conn: GuardedHttpProtocol) -> bool:
        group = self.open[conn.listener]
        if len(group) >= self.limits[conn.listener]:
            # make room by closing the idle connection nearest its deadline (a slow-loris one, or
            # a keep-alive one nobody uses), never one with a request in progress
            idle = [c for c in group if c.deadline and c.idle()]
            if not idle:
                if self._refused is not None:
                    self._refused.labels(conn.listener).inc()
                return False
            victim = min(idle, key=_deadline)
            victim.drop("evicted")
        group.add(conn)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.tick, self._sweep)
        return True

    def release(self, conn: GuardedHttpProtocol) -> None:
        self.open[conn.listener].discard(conn)

    def count_closed(self, reason: str) -> None:
        if self._closed is not None:
            self._closed.labels(reason).inc()

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        for group in self.open.values():
            for conn in list(group):
                if conn.send_deadline and conn.send_deadline <= now:
                    conn.send_deadline = 0.0
                    conn.drop("send_timeout", abort=True)
                elif conn.deadline and conn.deadline <= now:
                    conn.expire()
        if any(self.open.values()):
            self._timer = asyncio.get_running_loop().call_later(self.tick, self._sweep)


def _deadline(conn: GuardedHttpProtocol) -> float:
    return conn.deadline


_message_begin = HttpToolsProtocol.on_message_begin
_UVICORN_STARTS_TASKS = callable(getattr(HttpToolsProtocol, "_start_asgi_task", None))


class _Flow(FlowControl):  # type: ignore[misc]
    """uvicorn's flow control, except that reading stays paused while bytes already read wait
    unparsed behind a full pipeline (uvicorn's cycle resumes reading whenever it awaits a body,
    which would let such bytes pile up)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpProtocol) -> None:
        super().__init__(transport)
        self.protocol = protocol

    def resume_reading(self) -> None:
        if not self.protocol.backlog:
            super().resume_reading()


class _Refused(Exception):
    """Raised inside a parser callback to stop the parser; the refusal itself is kept on the protocol."""


# uvicorn is not followed (follow_imports=skip in pyproject), so its protocol class is Any to mypy.
class GuardedHttpProtocol(HttpToolsProtocol):  # type: ignore[misc]
    """`HttpToolsProtocol` with the limits above; uvicorn makes one per connection."""

    guard: ConnectionGuard  # set on the subclass `guarded_protocol` (or `protocol_for`) makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        guard = self.guard  # its limits are read per request: kept on the instance, the cheapest lookup
        self.max_header_bytes = guard.max_header_bytes
        self.max_headers = guard.max_headers
        self.header_timeout = guard.header_timeout
        self.keepalive_timeout = guard.keepalive_timeout
        self.listener = PUBLIC
        self.deadline = 0.0  # header or keep-alive deadline (monotonic); 0 while a request is being served
        self.send_deadline = 0.0  # set while the transport's write buffer is full
        self.in_head = False  # between a request's first byte and the end of its headers
        self.messages = 0  # requests begun on this connection
        self.head_bytes = 0  # request line, headers and trailers of the current request, as parsed
        self.fed_head = 0  # bytes fed while its head was in progress (httptools buffers a header until it ends)
        self.header_count = 0
        self.backlog = b""  # bytes read but not parsed while the pipeline is full
        self.backlog_scheduled = False
        self.refusal: Exception | None = None  # to answer once the requests before it are answered
        self.refusing: Exception | None = None  # raised in a parser callback, picked up after feed_data
        self.eof = False  # the client half-closed with replies still to send
        self.lingering = False  # an error reply is written and our side shut: reading only to drop
        self.active: Any = None  # the cycle started last (the one being answered, unless complete)

    # -- connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        guard = self.guard
        if guard.admin_port is not None and self.server is not None and self.server[1] == guard.admin_port:
            self.listener = ADMIN
        if not guard.admit(self):  # closed at once: a lingering close would hold the descriptor it lacks
            self.answer(TooManyConnections(f"more than {guard.limits[self.listener]} open connections: retry later"),
                        linger=False)
            return
        self.deadline = _now() + guard.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.release(self)
        self.deadline = self.send_deadline = 0.0
        self.backlog = b""
        active = self.active
        if active is not None and active is not self.cycle and not active.response_complete:
            # uvicorn marks only the newest cycle; the one being answered may be an earlier one,
            # waiting to write (write paused): it must not write to the closed transport
            active.disconnected = True
            active.message_event.set()
        super().connection_lost(exc)
        self.pipeline.clear()  # requests nobody will read the answers to: never started

    def handle_websocket_upgrade(self) -> None:
        self.guard.release(self)  # the transport is handed to uvicorn's websocket protocol
        self.deadline = self.send_deadline = 0.0
        super().handle_websocket_upgrade()

    def eof_received(self) -> bool | None:
        """The client shut down its sending side. Keep ours open while there are replies to send."""
        if self.lingering:
            return None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body:
            if not (self.pipeline and self.pipeline[0][0] is cycle):
                return None  # the request being answered will never get its body: closed (499)
            self.pipeline.popleft()  # a queued request cut short: dropped, the ones before it answered
            self.abandon(cycle)
        if self.refusal is None and (self.pipeline or self.backlog or not self.idle()):
            self.eof = True
            return True
        return None

    def idle(self) -> bool:
        """No request being answered or waiting to be."""
        cycle = self.cycle
        return not self.pipeline and (cycle is None or cycle.response_complete)

    def expire(self) -> None:
        """The header or keep-alive deadline passed (or the linger after an error reply)."""
        self.deadline = 0.0
        if self.lingering:
            self.transport.close()
        elif self.in_head:
            self.guard.count_closed("header_timeout")
            self.refuse(RequestTimeout(f"request headers not received within {self.guard.header_timeout:g} s "
                                       "(--header-timeout)"))
        else:
            self.drop("idle_timeout")

    def drop(self, reason: str, abort: bool = False) -> None:
        """Close without an answer, counted."""
        self.deadline = 0.0
        self.guard.count_closed(reason)
        if abort:
            self.transport.abort()  # a client that does not read would keep a closing transport forever
        elif not self.transport.is_closing():
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.send_deadline = time.monotonic() + self.guard.send_timeout

    def resume_writing(self) -> None:
        self.send_deadline = 0.0
        super().resume_writing()

    # -- reading ----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.backlog or self.refusal is not None or len(data) > SLICE or self.parser is None:
            self.received_otherwise(data)
            return
        # the common case, one piece (inline: this runs for every request)
        in_head, begun = self.in_head, self.messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgrade()
            return
        except httptools.HttpParserError as exc:
            self.parse_failed(exc)
            return
        if in_head and self.in_head and self.messages == begun:  # all of it belongs to one head
            self.fed_head += len(data)
            if self.fed_head > self.max_header_bytes:
                self.head_too_large()

    def received_otherwise(self, data: bytes) -> None:
        if self.refusal is not None or self.parser is None:
            return  # nothing after an error is read: the stream cannot be trusted past it
        if self.backlog:
            self.backlog += data
            self.flow.pause_reading()
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Parse `data` a slice at a time, holding back what follows a full pipeline."""
        parser = self.parser
        size = len(data)
        view = memoryview(data) if size > SLICE else None
        start = 0
        while True:
            piece = data if view is None else view[start:start + SLICE]
            head_of = self.messages if self.in_head else -1
            try:
                parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self.upgrade()
                return
            except httptools.HttpParserError as exc:
                self.parse_failed(exc)
                return
            if self.in_head and self.messages == head_of:  # this whole piece belongs to one head
                self.fed_head += len(piece)
                if self.fed_head > self.max_header_bytes:
                    self.head_too_large()
                    return
            start += SLICE
            if start >= size or self.transport.is_closing():
                return
            if len(self.pipeline) >= self.guard.max_pipeline:
                self.backlog = bytes(view[start:])  # type: ignore[index]  # view is set when size > SLICE
                self.flow.pause_reading()
                return

    def upgrade(self) -> None:
        if self._should_upgrade():
            self.handle_websocket_upgrade()
        else:
            self._unsupported_upgrade_warning()

    def parse_failed(self, exc: Exception) -> None:
        refusal, self.refusing = self.refusing, None
        if refusal is None:
            log.debug("invalid HTTP request: %s", exc)
            refusal = InvalidInput(f"invalid HTTP request: {exc}")
        self.guard.count_closed("bad_request")
        self.refuse(refusal)

    def head_too_large(self) -> None:
        self.guard.count_closed("bad_request")
        self.refuse(self.too_large())

    def feed_backlog(self) -> None:
        self.backlog_scheduled = False
        if (not self.backlog or self.refusal is not None or self.parser is None or self.transport.is_closing()
                or len(self.pipeline) >= self.guard.max_pipeline):
            return
        data, self.backlog = self.backlog, b""
        self.feed(data)
        if not self.backlog and self.refusal is None:
            if self.pipeline:
                return
            if self.eof and self.idle():
                self.transport.close()
            else:
                self.flow.resume_reading()

    def too_large(self) -> HeadersTooLarge:
        limit = self.max_header_bytes
        if not self.headers and self.in_head:
            return UriTooLong(f"request line over {limit} bytes (--max-header-bytes)")
        return HeadersTooLarge(f"request headers over {limit} bytes or {self.guard.max_headers} fields "
                               "(--max-header-bytes, --max-headers)")

    # -- parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        _message_begin(self)  # uvicorn's (a direct call: cheaper than super() on every request)
        self.in_head = True
        self.messages += 1
        self.head_bytes = self.fed_head = self.header_count = 0
        self.deadline = _now() + self.header_timeout

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > self.max_header_bytes:
            self.refusing = self.too_large()
            raise _Refused
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        self.header_count += 1
        if self.head_bytes > self.max_header_bytes or self.header_count > self.max_headers:
            self.refusing = self.too_large()
            raise _Refused
        if not self.in_head:
            return  # a trailer after a chunked body: counted above, never one of the request's headers
        name = name.lower()
        if name == b"expect":
            if value.lower() == b"100-continue":
                self.expect_100_continue = True
        elif name == b"transfer-encoding" and value.lower() != b"chunked":
            self.refusing = UnsupportedCoding(f"Transfer-Encoding {value.decode('latin-1')!r} is not supported: "
                                              "send the body as is, or chunked only")
            raise _Refused
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.deadline = 0.0
        super().on_headers_complete()

    # -- answering ----------------------------------------------------------------------------------
    def on_response_complete(self) -> None:
        """A reply is written (the write buffer was below its high-water mark): start the next
        pipelined request, parse held bytes, answer a pending error, or wait for the next request."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        flow = self.flow
        if flow.read_paused and not self.backlog and self.refusal is None:
            flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        if self.backlog:
            if not self.backlog_scheduled and len(self.pipeline) < self.guard.max_pipeline:
                self.backlog_scheduled = True
                self.loop.call_soon(self.feed_backlog)  # not from inside a parser callback
            return
        cycle = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            return  # a request still being answered
        if self.refusal is not None:
            self.answer(self.refusal)
        elif self.eof:
            self.transport.close()
        elif not self.in_head:
            self.deadline = _now() + self.keepalive_timeout

    def refuse(self, refusal: Exception) -> None:
        """A request this connection cannot serve: stop reading, answer every request parsed before
        it, then this error, then close."""
        self.refusal = refusal
        self.backlog = b""
        self.flow.pause_reading()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body:
            # the failing request's own body is cut short: it is answered by this error
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()
            self.abandon(cycle)
        if self.idle():
            self.answer(refusal)

    def abandon(self, cycle: Any) -> None:
        """A started request whose body will never come: its handler sees a disconnect, writes nothing."""
        cycle.disconnected = True
        cycle.response_complete = True
        cycle.message_event.set()

    def answer(self, exc: Exception, linger: bool = True) -> None:
        """Write the error reply to `exc` and close. Closing a socket with unread bytes sends a reset,
        which can destroy the reply before the client reads it; so, like nginx's lingering close, our
        side is shut and what the client still sends is read and dropped for `LINGER_S` first."""
        transport = self.transport
        if transport.is_closing():
            return
        status, headers, body = error_parts(exc, {"headers": self.headers or ()})
        headers["connection"] = "close"
        content = [STATUS_LINE[status]]
        for key, value in self.server_state.default_headers:
            content += (key, b": ", value, b"\r\n")
        for name, text in headers.items():
            content += (name.encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n")
        content += (b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        transport.write(b"".join(content))
        self.deadline = 0.0
        if linger and transport.can_write_eof():
            transport.write_eof()
            self.lingering = True
            self.backlog = b""
            self.flow.resume_reading()
            self.deadline = time.monotonic() + LINGER_S
        else:
            transport.close()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self.active = cycle
        if _UVICORN_STARTS_TASKS:
            super()._start_asgi_task(cycle, app)
        else:  # uvicorn < 0.41
            task = self.loop.create_task(cycle.run_asgi(app))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedHttpProtocol]:
    """The protocol class for `--http-fast-path off` (and `--access-log`)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})
