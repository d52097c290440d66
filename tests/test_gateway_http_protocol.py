"""The inference routes answered inside uvicorn's HTTP protocol (inferloop.gateway.transport.http_protocol), at the
byte level: what a client library would hide. Pipelined requests come back in order whichever path
answers each one, HTTP/1.0 and `Connection: close` close, `Expect: 100-continue` is honoured, a
server stopping mid-request still answers it, and every answer matches the ASGI path's."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inferloop.registry import Registry
from tests.gateway_harness import ThreadedGateway, eventually, infer_body, settings_for
from tests.helpers import register_tiny

MODEL = "demo"
ROW = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8]


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int, Path]:
    tmp = tmp_path_factory.mktemp("http-protocol")
    uri = f"file://{tmp / 'registry'}"
    with Registry.open(uri) as reg:
        version = register_tiny(reg, MODEL, seed=1)
        reg.promote(MODEL, version, "production")
    return uri, version, tmp


@pytest.fixture(scope="module")
def gateway(registry_uri: tuple[str, int, Path]) -> Iterator[ThreadedGateway]:
    uri, version, tmp = registry_uri
    with ThreadedGateway(settings_for(uri, [MODEL], tmp, server={"max_body_bytes": 4096})) as gw:
        gw.wait_serving(MODEL, version)
        yield gw


def _port(gw: ThreadedGateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def _request(path: str, body: bytes, *, version: str = "1.1", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def _responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read `count` responses (each with a Content-Length) off one connection."""
    buf, out = b"", []
    while len(out) < count:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers["content-length"])
            if len(rest) >= length:
                out.append((int(lines[0].split()[1]), headers, rest[:length]))
                buf = rest[length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {len(out)} of {count} responses")
        buf += chunk
    return out


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_pipelined_requests_are_answered_in_order_across_both_paths(gateway: ThreadedGateway) -> None:
    """Five requests in one write: inference (protocol path), metadata and a 404 (ASGI), a bad body
    (protocol path, 400), inference again. uvicorn's pipeline and the fast cycles keep their order."""
    body = json.dumps(infer_body([ROW], "first")).encode()
    data = (_request(f"/v2/models/{MODEL}/infer", body)
            + f"GET /v2/models/{MODEL} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            + _request(f"/v2/models/{MODEL}/infer", b'{"inputs": 1}')
            + _request(f"/v1/models/{MODEL}/predict", json.dumps({"instances": [ROW, ROW]}).encode()))
    with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
        sock.sendall(data)
        replies = _responses(sock, 5)
    assert [status for status, _, _ in replies] == [200, 200, 404, 400, 200]
    assert json.loads(replies[0][2])["id"] == "first"
    assert json.loads(replies[1][2])["name"] == MODEL
    assert len(json.loads(replies[4][2])["predictions"]) == 2


def test_http_1_0_and_connection_close_end_the_connection(gateway: ThreadedGateway) -> None:
    body = json.dumps(infer_body([ROW])).encode()
    for version, extra in (("1.0", ""), ("1.1", "Connection: close\r\n")):
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
            sock.sendall(_request(f"/v2/models/{MODEL}/infer", body, version=version, extra=extra))
            ((status, headers, _),) = _responses(sock, 1)
            assert status == 200 and headers["connection"] == "close"
            assert _closed(sock)


def test_keep_alive_serves_many_requests_on_one_connection(gateway: ThreadedGateway) -> None:
    body = json.dumps(infer_body([ROW])).encode()
    with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
        for _ in range(20):
            sock.sendall(_request(f"/v2/models/{MODEL}/infer", body))
            ((status, headers, _),) = _responses(sock, 1)
            assert status == 200 and "connection" not in headers


def test_expect_100_continue_is_honoured(gateway: ThreadedGateway) -> None:
    body = json.dumps(infer_body([ROW])).encode()
    head = _request(f"/v2/models/{MODEL}/infer", b"", extra="Expect: 100-continue\r\n")
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
        sock.sendall(head)
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        ((status, _, reply),) = _responses(sock, 1)
    assert status == 200 and json.loads(reply)["outputs"][0]["shape"] == [1, 1]


def test_a_body_over_the_limit_mid_stream_gets_413_and_a_closed_connection(gateway: ThreadedGateway) -> None:
    """Chunked (no Content-Length): the 413 comes as soon as the limit is crossed, not at the end."""
    with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
        sock.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"1," * 1500
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2)  # 6000 bytes > 4096, body not finished
        ((status, headers, reply),) = _responses(sock, 1)
        assert status == 413 and headers["connection"] == "close" and "larger than" in json.loads(reply)["error"]
        assert _closed(sock)


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_stopping_the_server_mid_request_still_answers_it(registry_uri: tuple[str, int, Path]) -> None:
    """Graceful shutdown waits for an inference request in flight in the protocol path; the answer
    carries `Connection: close`. The request is held in flight by occupying the device thread until
    the server has stopped accepting connections."""
    uri, version, tmp = registry_uri
    gw = ThreadedGateway(settings_for(uri, [MODEL], tmp))
    with gw:
        gw.wait_serving(MODEL, version)
        result: dict[str, httpx.Response] = {}
        batcher = gw.plane.models[MODEL].batcher
        gate = threading.Event()
        held = batcher.executor.submit(gate.wait)

        def call() -> None:
            with httpx.Client(timeout=30) as client:
                result["r"] = client.post(f"{gw.url}/v2/models/{MODEL}/infer", json=infer_body([ROW]))

        thread = threading.Thread(target=call)
        thread.start()
        eventually(lambda: batcher.in_flight, 10, "the request to wait for the device")
        gw.server.should_exit = True
        eventually(lambda: not _accepting(int(gw.url.rsplit(":", 1)[1])), 10, "the server to stop accepting connections")
        gate.set()
        held.result(30)
        thread.join(30)
    assert result["r"].status_code == 200 and result["r"].headers.get("connection") == "close"
