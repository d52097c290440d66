"""Reading request bodies with a deadline, for every handler that reads one.

uvicorn has no timeout for a request body: a client that sends its headers and then trickles (or
stops sending) its body holds a connection and a task forever (slow-loris). `BodyReader.read` gives
each body `timeout_s` from the moment the handler asks for it; past that the read is cancelled and
the request answered 408 (and the connection closed, see `error_responses`). A client that hangs up
mid-body becomes `ClientDisconnected` (499, counted, not a server error). `BodyReader.read` takes the
read itself: a Litestar `request.body()`, or `receive_body` on raw ASGI messages (the inference
routes, `inferloop.gateway.transport.inference`), which also enforces the size limit there.

No timer per request: a small body is already buffered when the handler runs and never waits, and
arming and cancelling a timer per request would cost more than the rest of the framework's work. So
reads register in a table (a dict insert and delete), and one timer, armed only while some read is
in the table, sweeps it every `tick` and cancels the overdue ones: a slow read ends between
`timeout_s` and `timeout_s + tick` after it started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from litestar.exceptions import InternalServerException

from inferloop.gateway.errors import BodyTooLarge, ClientDisconnected, RequestTimeout

if TYPE_CHECKING:
    from litestar.types import Receive


async def receive_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The whole body from ASGI `http.request` messages, refused past `limit` bytes: at once when the
    Content-Length says so, else as soon as the chunks received cross it."""
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"Content-Length {declared} is over the limit of {limit} bytes")
    message = await receive()
    body = cast(bytes, message.get("body", b""))  # ASGI: an http.request body is bytes
    if message["type"] == "http.request" and not message.get("more_body", False) and len(body) <= limit:
        return body  # the common case: one message
    chunks = [body]
    size = len(body)
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client closed the connection before sending its whole body")
        if size > limit:
            raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
        chunk = cast(bytes, message.get("body", b""))
        chunks.append(chunk)
        size += len(chunk)


class BodyReader:
    """Body deadlines for every reader: `read` for handlers awaiting a body (ASGI), `watch` and
    `unwatch` for readers that are called back as bytes arrive (`inferloop.gateway.transport.http_protocol`)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.tick = min(1.0, timeout_s / 4)
        self._reading: dict[object, tuple[float, Callable[[object], None]]] = {}  # key -> deadline, on expiry
        self._expired: set[object] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, key: object, on_expiry: Callable[[object], None]) -> None:
        """Call `on_expiry(key)` (once) unless `unwatch(key)` comes within `timeout_s`."""
        self._reading[key] = (time.monotonic() + self.timeout_s, on_expiry)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.tick, self._sweep)

    def unwatch(self, key: object) -> None:
        self._reading.pop(key, None)

    def timeout_error(self) -> RequestTimeout:
        return RequestTimeout(f"request body not received within {self.timeout_s:g} s (--body-timeout)")

    async def read(self, body: Awaitable[bytes]) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        self.watch(task, self._cancel)
        try:
            return await body
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # shutdown, not us
            self._expired.discard(task)
            task.uncancel()
            raise self.timeout_error() from None
        except InternalServerException as exc:  # Litestar's signal that the client went away mid-body
            if "disconnect" not in str(exc.detail):
                raise
            raise ClientDisconnected("the client closed the connection before sending its whole body") from None
        finally:
            self._reading.pop(task, None)  # gone already if the sweep expired it

    def _cancel(self, task: object) -> None:
        assert isinstance(task, asyncio.Task)
        self._expired.add(task)
        task.cancel()

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        for key, (deadline, on_expiry) in list(self._reading.items()):
            if deadline <= now:
                del self._reading[key]
                on_expiry(key)
        if self._reading:
            self._timer = asyncio.get_running_loop().call_later(self.tick, self._sweep)
