"""The gateway's front door against hostile clients: the figures RELIABILITY.md quotes, measured in one
run on both inference paths (`--http-fast-path on` and `off`), each against a fresh `inferloop serve`
child on 127.0.0.1 (file registry, the tests' tiny MLP).

    1. never-reading pipeliner: one connection sends up to 5,000 requests of 8,192 floats ([1024, 8])
       and reads no reply; requests the client got in before its sends blocked (2 s without progress),
       and the server's RSS growth while it is connected and after it leaves.
    2. header floods: 4 connections at once, each sending 10 MB of `X: 1` header lines; the status
       each gets and the server's RSS growth.
    3. half-open connections: 500 connections (250 silent, 250 with half a request line) with
       `--header-timeout 2`: the longest any of them stayed open, from its connect or first byte.
    4. connection flood: RLIMIT_NOFILE 1024 and `--admin-port`, a client keeping 1,000 idle
       connections open (reopening each one the server closes) for 15 s; meanwhile a health check
       every 0.2 s, an admin call every second, and a promotion of v2 in the registry: the checks
       answered, the time until v2 served (the poller), refused/evicted counts, "Too many open files"
       in the log.

    python -m loadtests.bench_hostile [--output FILE] [--flood N] [--only SCENARIO...] [--source DIR --legacy]

`--source DIR --legacy` runs an older checkout (its `inferloop` importable from DIR) without the
flags it lacks, for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from loadtests.raw_http import MODEL, Reader, connect, infer, infer_json, send_until_answered, status_of

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["pipeline", "headers", "half-open", "flood"]
MiB = 1024 * 1024


def make_registry(root: Path) -> str:
    import torch

    from inferloop.registry import MLP, Registry

    uri = f"file://{root / 'registry'}"
    with Registry.open(uri) as reg:
        for seed in (1, 2):
            torch.manual_seed(seed)
            x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1000 + seed))
            with reg.track(MODEL, actor="bench") as run:
                version = run.register(MLP(8, 1, [16]), example_inputs=x[:8], reference=x)
            if seed == 1:
                reg.promote(MODEL, version, "production", actor="bench")
    return uri


class Server:
    """`inferloop serve` on a socket bound here, optionally with a descriptor limit and an admin port."""

    def __init__(self, uri: str, root: Path, path: str, args: list[str], source: Path, nofile: int | None = None,
                 admin: bool = False) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_port = None
        extra = []
        if admin:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            self.admin_port = probe.getsockname()[1]
            probe.close()
            extra = ["--admin-port", str(self.admin_port)]
        self.log = root / f"serve-{path}-{self.port}.log"
        prefix = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else []
        argv = [*prefix, sys.executable, "-m", "inferloop.cli", "serve", "--fd", str(sock.fileno()), "--registry", uri,
                "--model", MODEL, "--cache-dir", str(root / f"cache-{self.port}"), "--log-level", "warning",
                "--poll-interval", "0.2", "--max-request-rows", "1024", "--http-fast-path", path, *extra, *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),),
                                         cwd=source, start_new_session=True,
                                         env={**os.environ, "INFERLOOP_ADMIN_TOKEN": "bench"})
        sock.close()
        deadline = time.monotonic() + 120
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()}")
            time.sleep(0.2)

    def get(self, path: str, port: int | None = None, headers: dict[str, str] | None = None,
            timeout: float = 5) -> int:
        try:
            with httpx.Client(timeout=timeout) as client:
                return client.get(f"http://127.0.0.1:{port or self.port}{path}", headers=headers).status_code
        except httpx.HTTPError:
            return 0

    def ready(self) -> bool:
        return self.get("/v2/health/ready") == 200

    def serving(self) -> int | None:
        try:
            r = httpx.get(f"{self.url}/v2/models/{MODEL}", timeout=5)
        except httpx.HTTPError:
            return None
        return int(r.headers["x-model-version"]) if r.status_code == 200 else None

    def rss(self) -> int:
        return status_of(self.proc.pid, "VmRSS")

    def metrics(self) -> str:
        try:
            return httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.HTTPError:
            return ""

    def close(self) -> str:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return self.log.read_text(errors="replace")


def sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# -- 1 ------------------------------------------------------------------------------------------------
def never_reading(server: Server) -> dict[str, object]:
    payload = infer(infer_json([[0.125 * (i % 8) for i in range(8)]] * 1024))
    before = server.rss()
    sent, peak = 0, 0
    with connect(server.port, timeout=2) as sock:
        try:
            for sent in range(1, 5001):  # noqa: B007 - the count is the result
                sock.sendall(payload)
                if sent % 100 == 0:
                    peak = max(peak, server.rss())
        except (TimeoutError, ConnectionResetError):
            sent -= 1
        connected = max(peak, server.rss()) - before
    time.sleep(1)
    return {"sent": sent, "rss_connected_mb": connected / MiB, "rss_after_mb": (server.rss() - before) / MiB}


# -- 2 ------------------------------------------------------------------------------------------------
def header_floods(server: Server) -> dict[str, object]:
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n".encode()
    filler = b"X: 1\r\n" * 10923  # 64 KiB
    statuses: list[int] = []
    before = server.rss()
    peak = [before]

    def flood() -> None:
        sock = connect(server.port, timeout=120)
        try:
            sock.sendall(head)
            sent = send_until_answered(sock, filler, 10**7)
            sock.settimeout(120)
            if sent >= 10**7:
                sock.sendall(b"\r\n")  # the whole 10 MB went in: end the headers
            try:
                statuses.append(Reader(sock).next().status)
            except (ConnectionError, TimeoutError):
                statuses.append(0)
        finally:
            sock.close()

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(server.rss())
        time.sleep(0.05)
    return {"statuses": sorted(statuses), "rss_peak_growth_mb": (max(peak) - before) / MiB,
            "rss_after_mb": (server.rss() - before) / MiB}


# -- 3 ------------------------------------------------------------------------------------------------
def half_open(server: Server, count: int = 500, header_timeout: float = 2.0) -> dict[str, object]:
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    for i in range(count):
        sock = connect(server.port)
        if i % 2:
            sock.sendall(b"POST /v2/mod")
        opened[sock] = time.monotonic()
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    lifetimes: list[float] = []
    answered_408 = 0
    deadline = time.monotonic() + header_timeout + 30
    while opened and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if data.startswith(b"HTTP/1.1 408"):
                answered_408 += 1
            if not data:
                lifetimes.append(time.monotonic() - opened.pop(sock))
                selector.unregister(sock)
                sock.close()
    for sock in opened:
        sock.close()
    return {"connections": count, "closed": len(lifetimes), "answered_408": answered_408,
            "longest_s": max(lifetimes) if lifetimes else None, "header_timeout_s": header_timeout}


# -- 4 ------------------------------------------------------------------------------------------------
def connection_flood(server: Server, uri: str, connections: int = 1000, seconds: float = 15.0) -> dict[str, object]:
    from inferloop.registry import Registry

    stop = threading.Event()
    opened = [0]

    def flooder() -> None:
        selector = selectors.DefaultSelector()
        live = 0
        while not stop.is_set():
            while live < connections and not stop.is_set():
                try:
                    sock = socket.create_connection(("127.0.0.1", server.port), timeout=1)
                except OSError:
                    break
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
                live += 1
                opened[0] += 1
            for key, _ in selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if sock.recv(65536):
                        continue
                except (BlockingIOError, ConnectionResetError):
                    pass
                selector.unregister(sock)
                sock.close()
                live -= 1
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    thread = threading.Thread(target=flooder)
    thread.start()
    time.sleep(2)  # let the flood build up
    health: list[tuple[int, float]] = []
    admin: list[int] = []
    promoted_at = time.monotonic()
    with Registry.open(uri) as reg:
        reg.promote(MODEL, 2, "production", actor="bench")
    served_after = None
    end = time.monotonic() + seconds
    next_admin = 0.0
    while time.monotonic() < end:
        started = time.monotonic()
        health.append((server.get("/v2/health/ready"), time.monotonic() - started))
        if started >= next_admin and server.admin_port is not None:
            admin.append(server.get(f"/admin/models/{MODEL}", server.admin_port, {"authorization": "Bearer bench"}))
            next_admin = started + 1.0
        if served_after is None and server.serving() == 2:
            served_after = time.monotonic() - promoted_at
        time.sleep(0.2)
    stop.set()
    thread.join(30)
    text = server.metrics()
    ok = [seconds for status, seconds in health if status == 200]
    return {"flood_connections_opened": opened[0], "health_ok": len(ok), "health_total": len(health),
            "health_p50_ms": 1000 * sorted(ok)[len(ok) // 2] if ok else None,
            "health_max_ms": 1000 * max(ok) if ok else None,
            "admin_ok": sum(1 for s in admin if s == 200), "admin_total": len(admin),
            "v2_served_after_s": served_after,
            "evicted": sample(text, "inferloop_http_connections_closed_total", reason="evicted"),
            "refused": sample(text, "inferloop_http_connections_refused_total", listener="public")}


def run_path(path: str, uri: str, root: Path, args: argparse.Namespace) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    source, legacy = args.source, args.legacy
    if "pipeline" in args.only or "headers" in args.only:
        server = Server(uri, root, path, [], source)
        try:
            if "pipeline" in args.only:
                results["never_reading"] = never_reading(server)
            if "headers" in args.only:
                results["header_floods"] = header_floods(server)
        finally:
            server.close()
    if "half-open" in args.only:
        server = Server(uri, root, path, [] if legacy else ["--header-timeout", "2"], source)
        try:
            results["half_open"] = half_open(server)
        finally:
            server.close()
    if "flood" not in args.only:
        return results
    server = Server(uri, root, path, [], source, nofile=1024, admin=not legacy)
    try:
        flood = connection_flood(server, uri, args.flood)
    finally:
        log = server.close()
        from inferloop.registry import Registry

        with Registry.open(uri) as reg:
            reg.promote(MODEL, 1, "production", actor="bench")
    flood["too_many_open_files_logged"] = log.count("Too many open files")
    results["connection_flood"] = flood
    return results


def render(results: dict[str, dict[str, dict[str, object]]], command: str, source: str, flood: int) -> str:
    def f(value: object, fmt: str = "{:.1f}") -> str:
        return "—" if value is None else fmt.format(value)

    lines = [f"# Hostile clients: figures ({source})", "", f"Command: `{command}`", "",
             f"Machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}; "
             f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
             "| measurement | fast path on | fast path off |", "|---|---|---|"]
    rows: list[tuple[str, Callable[[dict[str, dict[str, object]]], str]]] = [
        ("never-reading pipeliner: requests in before the client blocked (of 5,000)",
         lambda r: f(r["never_reading"]["sent"], "{}")),
        ("  RSS growth while connected / after it left (MB)",
         lambda r: f"{f(r['never_reading']['rss_connected_mb'])} / {f(r['never_reading']['rss_after_mb'])}"),
        ("4 × 10 MB headers: statuses", lambda r: str(r["header_floods"]["statuses"])),
        ("  RSS peak growth / after (MB)",
         lambda r: f"{f(r['header_floods']['rss_peak_growth_mb'])} / {f(r['header_floods']['rss_after_mb'])}"),
        ("500 half-open connections: closed (408 answered)",
         lambda r: f"{r['half_open']['closed']} ({r['half_open']['answered_408']})"),
        ("  longest open, s (header timeout 2 s)", lambda r: f(r["half_open"]["longest_s"], "{:.2f}")),
        (f"{flood:,}-connection flood at 1,024 descriptors: health checks answered",
         lambda r: f"{r['connection_flood']['health_ok']} / {r['connection_flood']['health_total']}"),
        ("  health check p50 / max (ms)",
         lambda r: f"{f(r['connection_flood']['health_p50_ms'])} / {f(r['connection_flood']['health_max_ms'])}"),
        ("  admin calls answered (admin port)",
         lambda r: f"{r['connection_flood']['admin_ok']} / {r['connection_flood']['admin_total']}"),
        ("  v2 promoted in the registry: served after (s)",
         lambda r: f(r["connection_flood"]["v2_served_after_s"], "{:.1f}")),
        ("  flood connections opened / evicted / refused",
         lambda r: f"{r['connection_flood']['flood_connections_opened']} / {f(r['connection_flood']['evicted'], '{:.0f}')}"
                   f" / {f(r['connection_flood']['refused'], '{:.0f}')}"),
        ("  \"Too many open files\" lines logged", lambda r: str(r["connection_flood"]["too_many_open_files_logged"])),
    ]
    for label, cell in rows:
        try:
            lines.append(f"| {label} | {cell(results['on'])} | {cell(results['off'])} |")
        except KeyError:
            continue  # a scenario not run
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, help="also write the markdown table here")
    p.add_argument("--source", type=Path, default=ROOT, help="checkout whose `inferloop` the servers run")
    p.add_argument("--legacy", action="store_true", help="the checkout predates the limits: pass no new flags")
    p.add_argument("--json", type=Path, help="also write the raw results as JSON")
    p.add_argument("--flood", type=int, default=1000, help="connections the flood keeps open (default 1000)")
    p.add_argument("--only", nargs="+", choices=SCENARIOS, default=SCENARIOS, help="scenarios to run (default all)")
    args = p.parse_args(argv)
    command = "python -m loadtests.bench_hostile " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="inferloop-hostile-") as tmp:
        root = Path(tmp)
        uri = make_registry(root)
        results = {path: run_path(path, uri, root, args) for path in ("on", "off")}
    report = render(results, command, "legacy checkout" if args.legacy else "this checkout", args.flood)
    print(report)
    if args.output:
        args.output.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
