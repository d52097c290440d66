"""Real gateways for tests: uvicorn on a pre-bound 127.0.0.1 socket (no port race), in a thread
(`ThreadedGateway`, the app object stays inspectable) or as an `inferloop serve` child process
(`GatewayProcess`, for signals and memory). Nothing of ours is mocked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from inferloop.gateway.app import create_app, uvicorn_config
from inferloop.gateway.serving.device import DeviceMemory
from inferloop.gateway.settings import (
    BatchingSettings,
    DriftSettings,
    GatewaySettings,
    RegistrySettings,
    RuntimeSettings,
    ServerSettings,
    ShadowSettings,
)

TOKEN = "test-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
T = TypeVar("T")


def settings_for(registry_uri: str, models: list[str], tmp_path: Path, *, admin_token: str | None = TOKEN,
                 poll_interval: float = 0.1, server: dict[str, Any] | None = None,
                 batching: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
                 registry: dict[str, Any] | None = None, shadow: dict[str, Any] | None = None,
                 drift: dict[str, Any] | None = None) -> GatewaySettings:
    return GatewaySettings(
        models=tuple(models),
        server=ServerSettings(admin_token=admin_token, log_level="warning", gc_freeze=False, admin_wait_s=20.0,
                              **(server or {})),
        registry=RegistrySettings(uri=registry_uri, poll_interval_s=poll_interval, retry_initial_s=0.2,
                                  retry_max_s=1.0, **(registry or {})),
        batching=BatchingSettings(**(batching or {})),
        runtime=RuntimeSettings(device="cpu", cache_dir=str(tmp_path / "blob-cache"), **(runtime or {})),
        shadow=ShadowSettings(**(shadow or {})),
        drift=DriftSettings(**(drift or {})),
    )


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


def eventually(check: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.02) -> T:
    """Poll `check` until it returns something truthy (returns it); a deadline, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s: {what}")
        time.sleep(interval)


class ThreadedGateway:
    def __init__(self, settings: GatewaySettings, memory: DeviceMemory | None = None) -> None:
        self.settings = settings
        self.app = create_app(settings, memory=memory)
        self.plane = self.app.state.plane
        self._sock = bound_socket()
        port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn_config(self.app, settings, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        eventually(lambda: self.server.started or not self._thread.is_alive(), 30, "uvicorn start")
        if not self.server.started:
            raise RuntimeError("gateway failed to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        eventually(lambda: self.client.get("/v2/health/ready").status_code == 200, timeout, "gateway ready")

    def wait_serving(self, model: str, version: int, timeout: float = 30.0) -> None:
        eventually(lambda: self.serving(model) == version, timeout, f"{model} v{version} serving")

    def serving(self, model: str) -> int | None:
        r = self.client.get(f"/v2/models/{model}")
        return int(r.headers["x-model-version"]) if r.status_code == 200 else None

    def status(self, model: str) -> dict[str, Any]:
        r = self.client.get(f"/admin/models/{model}", headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()

    @contextmanager
    def loop_blocked(self) -> Iterator[None]:
        """Hold the server's event loop (as one long callback would) until the block ends: what
        clients send meanwhile waits in the kernel and is read together afterwards."""
        loop = self.server.servers[0].get_loop()
        entered, gate = threading.Event(), threading.Event()

        def hold() -> None:
            entered.set()
            gate.wait(60)

        loop.call_soon_threadsafe(hold)
        assert entered.wait(30), "the event loop did not run the blocking callback"
        try:
            yield
        finally:
            gate.set()


class GatewayProcess:
    """`inferloop serve --fd N` in a child process; the listening socket is bound here first."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self._sock = bound_socket()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        fd = self._sock.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inferloop.cli", "serve", "--fd", str(fd), "--log-level", "warning", *args],
            pass_fds=[fd], env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._sock.close()  # the child holds the listener now; once it exits, connections are refused
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self.output = ""

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.collect_output()

    def collect_output(self) -> str:
        if self.proc.stdout is not None and self.proc.poll() is not None:
            self.output += self.proc.stdout.read().decode(errors="replace")
        return self.output

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}: {self.collect_output()}")
            try:
                return self.client.get("/v2/health/ready").status_code == 200
            except httpx.HTTPError:
                return False

        eventually(ready, timeout, "gateway process ready")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def status(self, model: str) -> dict[str, Any]:
        r = self.client.get(f"/admin/models/{model}", headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()


def infer_body(rows: list[list[float]], request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": [len(rows), len(rows[0]) if rows else 8],
                                        "datatype": "FP32", "data": [v for row in rows for v in row]}]}
    if request_id is not None:
        body["id"] = request_id
    return body
