"""Real processes for the fault-injection suite (`tests/test_faults_*.py`).

- `ServeProcess`: `inferloop serve` on a socket bound here first (`--fd`), `TrainerProcess`:
  `inferloop trainer serve` on a port. Each runs in its own process group with its output in a file
  (a pipe nobody reads would block a chatty child); `close()` stops the group, SIGKILL if it must,
  and runs in `finally`/fixture teardown, so a failing test leaves nothing behind.
- `Load`: client threads that send requests nonstop and record every answer (or connection error).
- `metric`: one sample read from a Prometheus text page.

Nothing of ours is mocked: the children are the installed CLI, the clients are plain HTTP.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .gateway_harness import AUTH, TOKEN, bound_socket, eventually, infer_body

ROOT = Path(__file__).resolve().parent.parent
ROW = [0.25, -0.5, 0.75, -1.0, 1.25, -1.5, 1.75, -2.0]


class ChildGroup:
    """A child process leading its own process group; its output goes to `log_path`."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = (), cwd: Path = ROOT) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=self._log,
                                     stderr=subprocess.STDOUT, pass_fds=pass_fds, start_new_session=True, cwd=cwd)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        """SIGKILL to the whole group, as an OOM kill or a lost machine would."""
        self.signal(signal.SIGKILL)
        self.proc.wait(30)

    def wait_answering(self, client: httpx.Client, path: str, timeout: float = 60.0) -> None:
        """Until GET `path` is 200; fails at once, with the child's output, if the child exits."""
        def answering() -> bool:
            if not self.alive:
                raise AssertionError(f"{self.proc.args[3:5]} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return client.get(path).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(answering, timeout, f"GET {path} answering 200")

    def close(self, grace: float = 20.0) -> int | None:
        if self.alive:
            self.signal(signal.SIGCONT)  # a stopped child cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)  # whatever is left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent); `name` as exposed, e.g. `..._total`."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


class ServeProcess(ChildGroup):
    """`inferloop serve --fd N` with the admin token set; `args` are further flags."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None, name: str = "gateway") -> None:
        sock = bound_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.port = sock.getsockname()[1]
        fd = sock.fileno()
        argv = [sys.executable, "-m", "inferloop.cli", "serve", "--fd", str(fd), "--log-level", "warning",
                "--poll-interval", "0.2", "--retry-initial", "0.2", "--retry-max", "1", "--no-gc-freeze", *args]
        log_path = tmp / f"{name}-{next(_serial)}.log"
        super().__init__(argv, log_path, {"INFERLOOP_ADMIN_TOKEN": TOKEN, **(env or {})}, pass_fds=(fd,))
        sock.close()  # the child holds the listener now
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def close(self, grace: float = 20.0) -> int | None:
        self.client.close()
        return super().close(grace)

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_answering(self.client, "/v2/health/ready", timeout)

    def serving(self, model: str) -> int | None:
        r = self.client.get(f"/v2/models/{model}")
        return int(r.headers["x-model-version"]) if r.status_code == 200 else None

    def wait_serving(self, model: str, version: int, timeout: float = 60.0) -> None:
        eventually(lambda: self.serving(model) == version, timeout, f"{model} v{version} serving")

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def status(self, model: str) -> dict[str, Any]:
        r = self.client.get(f"/admin/models/{model}", headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()


class TrainerProcess(ChildGroup):
    """`inferloop trainer serve` on `port`. Jobs run in their own sessions, so `close()` also kills any
    job process its state directory names (the service does on SIGTERM; this covers a SIGKILLed one)."""

    def __init__(self, tmp: Path, port: int, *, registry: str, policies: Path, state: Path,
                 env: dict[str, str] | None = None, command: tuple[str, ...] = (sys.executable, "-m", "inferloop.cli"),
                 cwd: Path = ROOT) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.state = state
        argv = [*command, "trainer", "serve", "--registry", registry,
                "--policies", str(policies), "--state-dir", str(state), "--port", str(port)]
        super().__init__(argv, tmp / f"trainer-{next(_serial)}.log", env, cwd=cwd)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def wait_up(self, timeout: float = 60.0) -> None:
        self.wait_answering(self.client, "/healthz", timeout)

    def jobs(self, model: str) -> list[dict[str, Any]]:
        r = self.client.get("/v1/jobs", params={"model": model})
        assert r.status_code == 200, r.text
        return r.json()["jobs"]

    def close(self, grace: float = 20.0) -> int | None:
        self.client.close()
        code = super().close(grace)
        kill_job_processes(self.state)
        return code


def kill_job_processes(state: Path) -> None:
    """Kill the process group of every job a trainer state directory says is running (if it still is)."""
    for path in (state / "jobs").glob("*.json"):
        job = json.loads(path.read_text())
        pid = job.get("pid")
        if not pid:
            continue
        with contextlib.suppress(OSError):
            if job["id"].encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def running(*children: ChildGroup) -> Iterator[None]:
    """Close every child on the way out, whatever happened inside."""
    try:
        yield
    finally:
        for child in children:
            child.close()


_serial = itertools.count(1)


@dataclass
class Answer:
    request_id: str
    status: int  # 0: no HTTP answer (connection refused, reset, closed before a response)
    version: int | None
    body: str = ""
    outputs: list[float] | None = None  # the OIP output tensor's data, when 200
    sent: float = 0.0  # time.monotonic() before sending and after the answer
    received: float = 0.0


class Load:
    """`threads` clients, each on its own keep-alive connection, POSTing single-row infers nonstop
    with unique request ids. `body_for(i)` may vary the rows (drift tests)."""

    def __init__(self, url: str, model: str, threads: int = 4,
                 body_for: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.url = url
        self.model = model
        self.body_for = body_for or (lambda rid: infer_body([ROW], rid))
        self.answers: list[Answer] = []
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(t,), daemon=True) for t in range(threads)]

    def _loop(self, t: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                rid = f"load-{t}-{next(self._ids)}"
                sent = time.monotonic()
                try:
                    r = client.post(f"/v2/models/{self.model}/infer", json=self.body_for(rid),
                                    headers={"x-request-id": rid})
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(rid, 0, None, repr(exc), sent=sent, received=time.monotonic()))
                    time.sleep(0.01)  # the server is gone or going: do not spin
                    continue
                ok = r.status_code == 200
                self.answers.append(Answer(rid, r.status_code, int(r.headers["x-model-version"]) if ok else None,
                                           "" if ok else r.text, r.json()["outputs"][0]["data"] if ok else None,
                                           sent, time.monotonic()))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def ok(self) -> list[Answer]:
        return [a for a in list(self.answers) if a.status == 200]

    def failed(self) -> list[Answer]:
        return [a for a in list(self.answers) if a.status != 200]

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` more answers than now have come back."""
        target = len(self.answers) + count
        eventually(lambda: len(self.answers) >= target, timeout, f"{count} more answers")
