"""HTTP/1.1 at the byte level over loopback sockets: what a client library would not let one send
(pipelines, trailers, half requests, floods) and read back. Used by tests/test_hostile_clients.py
and loadtests/bench_hostile.py."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = "m"
ROW = [0.25, -0.5, 0.75, -1.0, 1.25, -1.5, 1.75, -2.0]


def infer_json(rows: list[list[float]], request_id: str | None = None, datatype: str = "FP32") -> bytes:
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": datatype,
                                        "data": [v for row in rows for v in row]}]}
    if request_id is not None:
        body["id"] = request_id
    return json.dumps(body).encode()


def request(method: str, path: str, body: bytes = b"", *, headers: tuple[tuple[str, str], ...] = (),
            version: str = "1.1", chunks: list[bytes] | None = None, trailers: tuple[tuple[str, str], ...] = ()
            ) -> bytes:
    """One request's bytes: Content-Length framing, or chunked (`chunks`, then `trailers`)."""
    head = f"{method} {path} HTTP/{version}\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    if chunks is None:
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1") + body
    out = (head + "Transfer-Encoding: chunked\r\n\r\n").encode("latin-1")
    for chunk in chunks:
        out += b"%x\r\n%s\r\n" % (len(chunk), chunk)
    return out + b"0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in trailers).encode("latin-1") + b"\r\n"


def infer(body: bytes, *, model: str = MODEL, extra: tuple[tuple[str, str], ...] = (), version: str = "1.1") -> bytes:
    return request("POST", f"/v2/models/{model}/infer", body,
                   headers=(("Content-Type", "application/json"), *extra), version=version)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reader:
    """Responses off one connection, in order (every non-1xx answer of ours has a Content-Length)."""

    sock: socket.socket
    buf: bytes = field(default=b"")

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        self.buf += chunk
        return bool(chunk)

    def next(self) -> Response:
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                if len(rest) >= length:
                    self.buf = rest[length:]
                    return Response(status, headers, rest[:length])
            if not self._fill():
                raise ConnectionError(f"closed before a whole response (have {self.buf[:200]!r})")

    def many(self, count: int) -> list[Response]:
        return [self.next() for _ in range(count)]

    def closed(self) -> bool:
        """Whether the server closed the connection after what was read (waits up to the socket's timeout)."""
        if self.buf:
            return False
        try:
            return not self._fill()
        except TimeoutError:
            return False


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def exchange(port: int, data: bytes, count: int, timeout: float = 30.0) -> tuple[list[Response], bool]:
    """Send `data` on a new connection, read `count` responses, and whether the server then closed it."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        responses = reader.many(count)
        sock.settimeout(min(timeout, 5.0))
        return responses, reader.closed()


def status_of(pid: int, key: str) -> int:
    """A /proc/PID/status memory figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def send_until_answered(sock: socket.socket, filler: bytes, size: int) -> int:
    """Send `filler` repeatedly, up to `size` bytes, stopping as soon as the server answers (or
    closes); returns the bytes sent. The socket is left non-blocking: the caller sets its timeout."""
    sent = 0
    sock.settimeout(0.0)
    while sent < size:
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break
        except BlockingIOError:
            pass
        try:
            sent += sock.send(filler)
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            break
    return sent
