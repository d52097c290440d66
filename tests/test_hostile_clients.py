"""Hostile and broken clients against real `inferloop serve` children, over raw sockets on 127.0.0.1,
each case on both inference paths (`--http-fast-path on`: uvicorn's protocol answers inference itself;
`off`: everything through ASGI). After every case the server must still be healthy and a normal
request must get the same answer as before (the `still_serving` fixture), with no traceback logged.

Well-formed cases (these always passed; kept so they stay so): pipelining order across both paths,
a request split into one-byte packets, chunked bodies, `Expect: 100-continue`, HTTP/1.0, CL+TE and
duplicate Content-Length (request smuggling: 400 and closed).

Hostile cases (each failed before `gateway/transport/http_guard.py`): a client that pipelines and never
reads its replies, header floods, silent and half-sent connections, a connection flood at the
connection and descriptor limits, chunked trailers trying to change the request, JSON nested
1000 deep, an 8 MiB body of 500k rows, an error or a half-close inside a pipeline, deep pipelines,
`Transfer-Encoding: gzip, chunked`, integer inputs out of range, and the admin API on its own port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from inferloop.registry import Registry
from loadtests.raw_http import (
    MODEL,
    ROW,
    Reader,
    Response,
    connect,
    exchange,
    infer,
    infer_json,
    request,
    send_until_answered,
    status_of,
)

from .fault_harness import ChildGroup, ServeProcess, metric
from .gateway_harness import AUTH, TOKEN, bound_socket, eventually
from .helpers import register_tiny

PATHS = ["on", "off"]
MAX_HEADER_BYTES, MAX_HEADERS, MAX_CONNECTIONS = 8192, 40, 48
LIMITS = ["--max-header-bytes", str(MAX_HEADER_BYTES), "--max-headers", str(MAX_HEADERS), "--header-timeout", "1",
          "--keepalive-timeout", "1", "--send-timeout", "4", "--max-pipeline", "4",
          "--max-connections", str(MAX_CONNECTIONS), "--body-timeout", "60", "--max-request-rows", "1024"]


@dataclass
class Gateway:
    proc: ServeProcess
    path: str
    expected: list[float]  # the answer to `normal()`, taken at start

    @property
    def port(self) -> int:
        return self.proc.port

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        with httpx.Client(base_url=self.proc.url, timeout=30) as client:  # a fresh connection every time
            return client.get(path, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        with httpx.Client(base_url=self.proc.url, timeout=30) as client:
            return client.post(path, **kwargs)  # type: ignore[arg-type]

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.get("/metrics").text, name, **labels)

    def rss(self) -> int:
        return status_of(self.proc.proc.pid, "VmRSS")


def normal(gw: Gateway) -> list[float]:
    r = gw.post(f"/v2/models/{MODEL}/infer", content=infer_json([ROW]), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    data: list[float] = r.json()["outputs"][0]["data"]
    return data


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("hostile")
    uri = f"file://{tmp / 'registry'}"
    with Registry.open(uri) as reg:
        reg.promote(MODEL, register_tiny(reg, MODEL, seed=1), "production")
        register_tiny(reg, MODEL, seed=2)  # v2: promoted during the descriptor flood
    return uri, tmp


@pytest.fixture(scope="module", params=PATHS, ids=[f"fast-path-{p}" for p in PATHS])
def gw(request: pytest.FixtureRequest, registry_uri: tuple[str, Path]) -> Iterator[Gateway]:
    uri, tmp = registry_uri
    proc = ServeProcess(tmp, ["--registry", uri, "--model", MODEL, "--cache-dir", str(tmp / f"c-{request.param}"),
                              "--http-fast-path", request.param, *LIMITS], name=f"gateway-{request.param}")
    try:
        proc.wait_ready()
        gateway = Gateway(proc, request.param, [])
        gateway.expected = normal(gateway)
        yield gateway
    finally:
        proc.close()


@pytest.fixture(autouse=True)
def still_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each case: the process runs, is ready, answers a normal request as before, logged no traceback."""
    yield
    if "gw" not in request.fixturenames:
        return
    gw: Gateway = request.getfixturevalue("gw")
    assert gw.proc.alive, gw.proc.output()
    assert gw.get("/v2/health/ready").status_code == 200
    assert normal(gw) == gw.expected
    assert "Traceback" not in gw.proc.output() and "unhandled error" not in gw.proc.output(), gw.proc.output()


# -- well-formed clients -----------------------------------------------------------------------
def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    data = (infer(infer_json([ROW], "first"))
            + request("GET", f"/v2/models/{MODEL}")
            + request("GET", "/nowhere")
            + infer(b'{"inputs": 1}')
            + request("POST", f"/v1/models/{MODEL}/predict", json.dumps({"instances": [ROW, ROW]}).encode(),
                      headers=(("Content-Type", "application/json"),)))
    replies, _ = exchange(gw.port, data, 5)
    assert [r.status for r in replies] == [200, 200, 404, 400, 200]
    assert replies[0].json()["id"] == "first" and replies[0].json()["outputs"][0]["data"] == gw.expected
    assert len(replies[4].json()["predictions"]) == 2


def test_a_request_split_into_one_byte_packets_is_answered(gw: Gateway) -> None:
    with connect(gw.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in infer(infer_json([ROW])):
            sock.send(bytes([byte]))
        reply = Reader(sock).next()
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == gw.expected


def test_a_chunked_body_is_answered(gw: Gateway) -> None:
    body = infer_json([ROW])
    data = request("POST", f"/v2/models/{MODEL}/infer", headers=(("Content-Type", "application/json"),),
                   chunks=[body[:10], body[10:20], body[20:]])
    (reply,), _ = exchange(gw.port, data, 1)
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == gw.expected


def test_expect_100_continue_is_honoured(gw: Gateway) -> None:
    body = infer_json([ROW])
    head = request("POST", f"/v2/models/{MODEL}/infer", headers=(
        ("Content-Type", "application/json"), ("Expect", "100-continue"), ("Content-Length", str(len(body)))))
    with connect(gw.port) as sock:
        sock.sendall(head.replace(b"Content-Length: 0\r\n", b""))
        reader = Reader(sock)
        assert reader.next().status == 100
        sock.sendall(body)
        reply = reader.next()
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == gw.expected


def test_http_1_0_is_answered_and_closed(gw: Gateway) -> None:
    (reply,), closed = exchange(gw.port, infer(infer_json([ROW]), version="1.0"), 1)
    assert reply.status == 200 and reply.headers["connection"] == "close" and closed


@pytest.mark.parametrize("framing", [
    (("Content-Length", "20"), ("Transfer-Encoding", "chunked")),
    (("Content-Length", "20"), ("Content-Length", "21")),
    (("Content-Length", "20"), ("Content-Length", "20")),
], ids=["cl-and-te", "two-lengths", "same-length-twice"])
def test_ambiguous_framing_is_400_and_closed(gw: Gateway, framing: tuple[tuple[str, str], ...]) -> None:
    """Request smuggling: a front proxy and this server must never disagree on where a body ends."""
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in framing) + b"\r\n"
    (reply,), closed = exchange(gw.port, head + b"0\r\n\r\n" + b"x" * 21, 1)
    assert reply.status == 400 and closed


# -- 1. a client that pipelines and never reads ---------------------------------------------------
def test_a_client_that_never_reads_its_replies_is_paused_not_buffered(gw: Gateway) -> None:
    """1,500 pipelined requests of 8,192 floats, none of the replies read: the server stops reading
    once its write buffer is full (the client's sends then block), so memory stays flat; after
    --send-timeout without the client reading, it is disconnected and its queued work dropped."""
    total = 1500
    payload = infer(infer_json([[0.125 * (i % 8) for i in range(8)]] * 1024))
    before = gw.rss()
    answered_before = gw.metric("inferloop_requests_total", model=MODEL, role="primary", code="200")
    dropped = gw.metric("inferloop_http_connections_closed_total", reason="send_timeout")
    sent = 0
    with connect(gw.port, timeout=2) as sock:
        try:
            for sent in range(1, total + 1):  # noqa: B007 - the count is the result
                sock.sendall(payload)
        except (TimeoutError, ConnectionResetError):  # blocked (or already dropped by the server)
            sent -= 1
        grown = gw.rss() - before
        answered = gw.metric("inferloop_requests_total", model=MODEL, role="primary", code="200") - answered_before
        eventually(lambda: gw.metric("inferloop_http_connections_closed_total", reason="send_timeout") > dropped,
                   30, "the non-reading client disconnected")
    assert sent < total, "the server read every request without its replies being read"
    assert grown < 20 * 1024**2, f"RSS grew {grown / 2**20:.1f} MB"
    assert answered < sent


# -- 2. header floods -------------------------------------------------------------------------------
def _flood(port: int, head: bytes, filler: bytes, size: int) -> Reader:
    """Send `head` then `filler` up to `size` bytes, stopping as soon as the server answers."""
    sock = connect(port)
    sock.sendall(head)
    send_until_answered(sock, filler, size)
    sock.settimeout(30)
    return Reader(sock)


def test_header_floods_get_431_without_growing_the_server(gw: Gateway) -> None:
    """Four connections at once, each sending 10 MB of `X: 1` header lines: each gets 431 after
    about the limit, and the server does not grow (it grew ~237 MB per connection before)."""
    before = gw.rss()
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n".encode()
    readers: list[Reader] = []
    threads = [threading.Thread(target=lambda: readers.append(_flood(gw.port, head, b"X: 1\r\n" * 10923, 10**7)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    grown = gw.rss() - before
    for reader in readers:
        reply = reader.next()
        assert reply.status == 431 and "--max-header-bytes" in reply.json()["error"]
        assert reply.headers["connection"] == "close"
        reader.sock.close()
    assert len(readers) == 4
    assert grown < 10 * 1024**2, f"RSS grew {grown / 2**20:.1f} MB"


@pytest.mark.parametrize("what", ["one-huge-header", "too-many-headers", "huge-url", "trailers"])
def test_every_kind_of_oversized_head_is_refused(gw: Gateway, what: str) -> None:
    body = infer_json([ROW])
    if what == "one-huge-header":
        data = infer(body, extra=(("X-Big", "a" * 100_000),))
    elif what == "too-many-headers":
        data = infer(body, extra=tuple((f"X-{i}", "1") for i in range(MAX_HEADERS + 1)))
    elif what == "huge-url":
        data = request("GET", "/v2/" + "a" * 20_000)
    else:
        data = request("POST", f"/v2/models/{MODEL}/infer", headers=(("Content-Type", "application/json"),),
                       chunks=[body], trailers=tuple((f"X-{i}", "x" * 300) for i in range(MAX_HEADERS)))
    (reply,), closed = exchange(gw.port, data, 1)
    assert reply.status == (414 if what == "huge-url" else 431) and closed, reply


def test_headers_at_the_limits_are_accepted(gw: Gateway) -> None:
    extra = tuple((f"X-{i}", "y" * 100) for i in range(MAX_HEADERS - 3))  # plus Host, Content-Type, -Length
    (reply,), _ = exchange(gw.port, infer(infer_json([ROW]), extra=extra), 1)
    assert reply.status == 200


# -- 3. silent, half-sent and idle connections ------------------------------------------------------
def test_silent_and_half_sent_connections_are_closed_after_the_header_timeout(gw: Gateway) -> None:
    """20 connections that send nothing and 20 that send half a request line are closed once
    --header-timeout (1 s) passes: the half-sent ones with 408. An idle keep-alive connection is
    closed after --keepalive-timeout."""
    timed_out = gw.metric("inferloop_http_connections_closed_total", reason="header_timeout")
    silent = [connect(gw.port, timeout=15) for _ in range(20)]
    partial = [connect(gw.port, timeout=15) for _ in range(20)]
    for sock in partial:
        sock.sendall(b"POST /v2/mod")
    keepalive = connect(gw.port, timeout=15)
    keepalive.sendall(infer(infer_json([ROW])))
    idle = Reader(keepalive)
    assert idle.next().status == 200
    try:
        for sock in partial:
            reply = Reader(sock).next()
            assert reply.status == 408 and "--header-timeout" in reply.json()["error"]
        assert all(Reader(sock).closed() for sock in silent + partial)
        assert idle.closed()
    finally:
        for sock in [*silent, *partial, keepalive]:
            sock.close()
    assert gw.metric("inferloop_http_connections_closed_total", reason="header_timeout") >= timed_out + 20


# -- 3. the connection limit --------------------------------------------------------------------------
def test_at_the_connection_limit_idle_connections_make_room_and_busy_ones_get_503(gw: Gateway) -> None:
    """48 idle connections fill --max-connections: a health check still gets through (the idle
    connection nearest its deadline is closed for it). 48 connections busy with a request (headers
    sent, body pending) leave no room: a new connection gets 503, counted."""
    idle = [connect(gw.port) for _ in range(MAX_CONNECTIONS)]
    try:
        assert gw.get("/v2/health/live").status_code == 200
        assert gw.metric("inferloop_http_connections_closed_total", reason="evicted") >= 1
    finally:
        for sock in idle:
            sock.close()
    refused = gw.metric("inferloop_http_connections_refused_total", listener="public")
    eventually(lambda: gw.metric("inferloop_http_connections", listener="public") <= 1, 10, "idle ones gone")
    head = request("POST", f"/v2/models/{MODEL}/infer", headers=(("Content-Type", "application/json"),
                                                                   ("Content-Length", "100")))
    busy = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = connect(gw.port)
            sock.sendall(head.replace(b"Content-Length: 0\r\n", b""))
            busy.append(sock)
        # each attempt either gets 503 or, while the server has not read every busy request's headers
        # yet, is admitted in place of one still idle (then closed at its header timeout)
        reply = eventually(lambda: _refused(gw.port), 30, "a new connection refused with 503")
        assert reply.headers["retry-after"] == "1" and reply.headers["connection"] == "close"
    finally:
        for sock in busy:
            sock.close()
    eventually(lambda: gw.metric("inferloop_http_connections", listener="public") <= 1, 10, "busy ones gone")
    assert gw.metric("inferloop_http_connections_refused_total", listener="public") >= refused + 1


def _refused(port: int) -> Response | None:
    with connect(port) as sock:
        try:
            reply = Reader(sock).next()
        except ConnectionError:
            return None
    return reply if reply.status == 503 else None


# -- 4. trailers ----------------------------------------------------------------------------------------
def _chunked_infer(trailers: tuple[tuple[str, str], ...], headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    return request("POST", f"/v2/models/{MODEL}/infer", headers=(("Content-Type", "application/json"), *headers),
                   chunks=[infer_json([ROW])], trailers=trailers)


def test_trailers_never_change_how_a_request_is_decoded_or_identified(gw: Gateway) -> None:
    data = (_chunked_infer((("Content-Type", "text/plain"),))
            + _chunked_infer((("X-Request-Id", "from-trailer"),), (("X-Request-Id", "from-header"),))
            + _chunked_infer((("Inference-Header-Content-Length", "5"),)))
    replies, _ = exchange(gw.port, data, 3)
    assert [r.status for r in replies] == [200, 200, 200], replies
    assert replies[1].headers["x-request-id"] == "from-header"
    assert all(r.json()["outputs"][0]["data"] == gw.expected for r in replies)


def test_an_admin_token_in_a_trailer_is_not_a_token(gw: Gateway) -> None:
    body = json.dumps({"version": 2, "reason": "trailer"}).encode()
    data = request("POST", f"/admin/models/{MODEL}/promote", headers=(("Content-Type", "application/json"),),
                   chunks=[body], trailers=(("Authorization", AUTH["authorization"]),))
    (reply,), _ = exchange(gw.port, data, 1)
    assert reply.status == 401
    assert gw.proc.serving(MODEL) == 1


# -- 5. deep nesting ---------------------------------------------------------------------------------
def test_json_nested_a_thousand_deep_is_400(gw: Gateway) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    v2 = infer_json([ROW])[:-1] + b', "parameters": {"x": ' + deep + b"}}"
    v1 = b'{"instances": [' + json.dumps(ROW).encode() + b'], "x": ' + deep + b"}"
    admin = b'{"version": 1, "x": ' + deep + b"}"
    for path, body in ((f"/v2/models/{MODEL}/infer", v2), (f"/v1/models/{MODEL}/predict", v1)):
        r = gw.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"], (path, r.text)
    # admin bodies forbid unknown fields: refused at the key, before its value is read
    r = gw.post(f"/admin/models/{MODEL}/promote", content=admin, headers={"content-type": "application/json", **AUTH})
    assert r.status_code == 400


# -- 6. oversized work -----------------------------------------------------------------------------------
def test_more_rows_than_the_limit_are_refused_before_their_values_are_decoded(gw: Gateway) -> None:
    """An 8 MB body of 500,000 rows (v2 and v1) is refused from its declared shape / row count; the
    server's peak memory does not grow by the decoded rows (it grew ~215 MB before)."""
    rows = 500_000
    v2 = (b'{"inputs":[{"name":"input","shape":[%d,8],"datatype":"FP32","data":[' % rows
          + b",".join([b"0"] * (rows * 8)) + b"]}]}")
    v1 = b'{"instances":[' + b",".join([b"[0,0,0,0,0,0,0,0]"] * 400_000) + b"]}"
    Path(f"/proc/{gw.proc.proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    peak = status_of(gw.proc.proc.pid, "VmHWM")
    for path, body, count in ((f"/v2/models/{MODEL}/infer", v2, rows), (f"/v1/models/{MODEL}/predict", v1, 400_000)):
        r = gw.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and f"{count} rows exceed the limit of 1024" in r.json()["error"], r.text
    grown = status_of(gw.proc.proc.pid, "VmHWM") - peak
    assert grown < 100 * 1024**2, f"peak RSS grew {grown / 2**20:.0f} MB"


def test_a_large_valid_request_is_decoded_off_the_event_loop_and_answered(gw: Gateway) -> None:
    rows = [[0.001 * i] * 8 for i in range(1024)]
    r = gw.post(f"/v2/models/{MODEL}/infer", content=infer_json(rows), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1024, 1]


# -- 7. pipelining edge cases ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["garbage", "header-flood", "gzip"])
def test_an_error_in_a_pipeline_is_answered_after_the_requests_before_it(gw: Gateway, bad: str) -> None:
    second = {"garbage": b"NOT HTTP AT ALL\r\n\r\n",
              "header-flood": infer(b"{}", extra=tuple((f"X-{i}", "1") for i in range(MAX_HEADERS + 5))),
              "gzip": request("POST", f"/v2/models/{MODEL}/infer", headers=(("Transfer-Encoding", "gzip, chunked"),))
              + b"0\r\n\r\n"}[bad]
    replies, closed = exchange(gw.port, infer(infer_json([ROW], "a")) + infer(infer_json([ROW], "b")) + second, 3)
    assert [r.status for r in replies] == [200, 200, {"garbage": 400, "header-flood": 431, "gzip": 501}[bad]]
    assert [r.json().get("id") for r in replies[:2]] == ["a", "b"] and closed


def test_a_client_that_half_closes_after_sending_gets_every_reply(gw: Gateway) -> None:
    with connect(gw.port) as sock:
        sock.sendall(infer(infer_json([ROW], "a")) + request("GET", "/v2/health/live") + infer(infer_json([ROW], "c")))
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        replies = reader.many(3)
        assert reader.closed()
    assert [r.status for r in replies] == [200, 200, 200]
    assert replies[0].json()["id"] == "a" and replies[2].json()["outputs"][0]["data"] == gw.expected


def test_a_deep_pipeline_is_answered_in_order_a_few_at_a_time(gw: Gateway) -> None:
    """300 requests in one write (inference and health alternating), --max-pipeline 4: all
    answered, in order; the rest waited unparsed."""
    data = b"".join(infer(infer_json([ROW], str(i))) if i % 2 else request("GET", "/v2/health/live")
                    for i in range(300))
    replies, _ = exchange(gw.port, data, 300)
    assert all(r.status == 200 for r in replies)
    assert [r.json()["id"] for r in replies[1::2]] == [str(i) for i in range(1, 300, 2)]


# -- 8. smaller risks -----------------------------------------------------------------------------------
def test_a_transfer_coding_other_than_chunked_is_501(gw: Gateway) -> None:
    data = request("POST", f"/v2/models/{MODEL}/infer", headers=(("Content-Type", "application/json"),
                                                                   ("Transfer-Encoding", "gzip, chunked")))
    (reply,), closed = exchange(gw.port, data + b"3\r\nabc\r\n0\r\n\r\n", 1)
    assert reply.status == 501 and "gzip" in reply.json()["error"] and closed


@pytest.mark.parametrize("datatype,value", [("INT8", 300), ("INT8", 1.5), ("UINT8", -1), ("INT16", 70000)])
def test_integer_inputs_out_of_their_type_are_400(gw: Gateway, datatype: str, value: float) -> None:
    rows = [[value, 1, 2, 3, 4, 5, 6, 7]]
    r = gw.post(f"/v2/models/{MODEL}/infer", content=infer_json(rows, datatype=datatype),  # type: ignore[list-item]
                headers={"content-type": "application/json"})
    assert r.status_code == 400 and datatype in r.json()["error"], r.text
    ok = gw.post(f"/v2/models/{MODEL}/infer", content=infer_json([[1, 2, 3, 4, 5, 6, 7, 8]], datatype=datatype),
                 headers={"content-type": "application/json"})
    assert ok.status_code == 200


# -- a descriptor limit, a connection flood, and the admin listener ---------------------------------------
class LimitedServe(ServeProcess):
    """`inferloop serve` with RLIMIT_NOFILE at `nofile`, an admin listener, default connection limit."""

    def __init__(self, tmp: Path, args: list[str], nofile: int, name: str) -> None:
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        admin = bound_socket()
        self.admin_port = admin.getsockname()[1]
        admin.close()  # the child binds it (--admin-port); loopback, the port is free again at once
        fd = sock.fileno()
        argv = ["prlimit", f"--nofile={nofile}:{nofile}", "--", sys.executable, "-m", "inferloop.cli", "serve",
                "--fd", str(fd), "--log-level", "warning", "--poll-interval", "0.2", "--no-gc-freeze",
                "--admin-port", str(self.admin_port), *args]
        ChildGroup.__init__(self, argv, tmp / f"{name}.log", {"INFERLOOP_ADMIN_TOKEN": TOKEN}, pass_fds=(fd,))
        sock.close()
        self.client = httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="module", params=PATHS, ids=[f"fast-path-{p}" for p in PATHS])
def limited(request: pytest.FixtureRequest, registry_uri: tuple[str, Path]) -> Iterator[LimitedServe]:
    uri, tmp = registry_uri
    proc = LimitedServe(tmp, ["--registry", uri, "--model", MODEL, "--cache-dir", str(tmp / f"l-{request.param}"),
                              "--http-fast-path", request.param, "--header-timeout", "30"], 256,
                        f"limited-{request.param}")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.close()


def _answers(url: str, path: str, headers: dict[str, str] | None = None) -> int:
    try:
        with httpx.Client(timeout=10) as client:
            return client.get(url + path, headers=headers).status_code
    except httpx.HTTPError:
        return 0


def test_a_connection_flood_at_the_descriptor_limit_leaves_health_poller_and_admin_working(
        limited: LimitedServe, registry_uri: tuple[str, Path]) -> None:
    """RLIMIT_NOFILE 256, 300 idle connections (more than the 128 the server keeps for clients):
    health checks still answer, the admin listener answers, the registry poller still follows a
    promotion, nothing logs "Too many open files"."""
    uri, _ = registry_uri
    flood = []
    try:
        for _ in range(300):
            flood.append(connect(limited.port))
        admin = f"http://127.0.0.1:{limited.admin_port}"
        assert _answers(limited.url, "/v2/health/ready") == 200
        assert _answers(admin, f"/admin/models/{MODEL}", AUTH) == 200
        with Registry.open(uri) as reg:
            reg.promote(MODEL, 2, "production")
        try:
            eventually(lambda: _answers(limited.url, "/v2/health/ready") == 200 and limited.serving(MODEL) == 2, 60,
                       "v2 served during the flood")
        finally:
            with Registry.open(uri) as reg:
                reg.promote(MODEL, 1, "production")
        text = httpx.get(f"{limited.url}/metrics", timeout=10).text
        assert metric(text, "inferloop_http_connections_closed_total", reason="evicted") >= 300 - 128
    finally:
        for sock in flood:
            sock.close()
    eventually(lambda: limited.serving(MODEL) == 1, 60, "v1 back")
    assert "Too many open files" not in limited.output(), limited.output()
    assert "Traceback" not in limited.output()


def test_with_an_admin_port_the_admin_api_is_only_there(limited: LimitedServe) -> None:
    admin = f"http://127.0.0.1:{limited.admin_port}"
    assert _answers(limited.url, f"/admin/models/{MODEL}", AUTH) == 404
    assert _answers(admin, f"/admin/models/{MODEL}", AUTH) == 200
    assert _answers(admin, f"/admin/models/{MODEL}") == 401
    assert _answers(admin, "/v2/health/ready") == 200  # probes and metrics answer on both
    assert _answers(limited.url, "/metrics") == 200


def test_a_second_server_on_a_taken_admin_port_is_one_clear_error(limited: LimitedServe, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "inferloop.cli", "serve", "--model", MODEL, "--port", "0",
                          "--registry", f"file://{tmp_path}", "--admin-port", str(limited.admin_port)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--admin-port" in out.stderr and "Traceback" not in out.stderr, out.stderr
