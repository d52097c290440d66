"""Docs that run: every command block in README.md and docs/*.md marked for testing runs here, as
printed, in the directory where `inferloop demo` just ran (so on the demo's registry, through the
project config it wrote), and must exit 0.

The marker is an HTML comment on the line before a ```bash fence (invisible when rendered):

    <!-- doc-test -->            the block runs on its own (it may start `inferloop serve ... &`)
    <!-- doc-test: gateway -->   the demo's gateway is started first, as the README starts it
                                 (`inferloop serve --model revenue-forecast`)

What the harness changes, and nothing else: port 8000 becomes a free port (`INFERLOOP_PORT` for the
gateway, the URLs rewritten), `curl` fails on an HTTP error status and retries while the gateway
starts (connection refused, 503), and background processes are stopped after the block. An example
that drifts from the code (8 features for a 9-feature model, a flag that does not exist) fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- doc-test(?::\s*(?P<kind>[\w-]+))? -->\s*$")
TOKEN = "doc-test-admin-token"
MODEL = "revenue-forecast"

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="the examples are curl commands")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    kind: str  # "" (on its own) or "gateway"
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def marked_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            found = MARKER.match(line)
            if not found:
                continue
            assert i + 1 < len(lines) and lines[i + 1].strip() == "```bash", f"{path.name}:{i + 1}: marker without a bash block"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
            blocks.append(Block(path.relative_to(ROOT).as_posix(), i + 2, found["kind"] or "",
                                "\n".join(lines[i + 2:end])))
    return blocks


BLOCKS = marked_blocks()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERLOOP_")}
    return {**env, "INFERLOOP_PORT": str(port), "INFERLOOP_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}


PREAMBLE = """\
set -euo pipefail
curl() { command curl --silent --show-error --fail-with-body --retry 60 --retry-delay 1 --retry-connrefused \\
    --max-time 60 "$@"; echo; }
"""
# `inferloop`, `locust` and `python` as this interpreter runs them, as executables on PATH (so that
# `inferloop serve &` is the server's own process, which `kill %1` stops, as in a user's shell)
COMMANDS = {"inferloop": ["-P", "-m", "inferloop.cli"], "locust": ["-m", "locust"], "python": []}


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bin")
    for name, args in COMMANDS.items():
        path = directory / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" {" ".join(args)} "$@"\n')
        path.chmod(0o755)
    return directory


def _script(block: Block, port: int) -> str:
    text = re.sub(r"\b(localhost|127\.0\.0\.1):8000\b", f"127.0.0.1:{port}", block.text)
    return PREAMBLE + text + "\n"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project directory after `inferloop demo` (the command line, as a user runs it), with the
    repository's `examples/` and `loadtests/` beside it, as in a checkout."""
    project = tmp_path_factory.mktemp("project")
    for name in ("examples", "loadtests"):
        (project / name).symlink_to(ROOT / name)
    r = subprocess.run([sys.executable, "-P", "-m", "inferloop.cli", "demo", "--rows-per-day", "600"], cwd=project,
                       env=_env(_free_port()), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "the loop closed" in r.stdout
    assert "registry commands in this directory now use the demo's registry" in r.stdout
    # the commands it prints next are the README's, word for word
    readme = (ROOT / "README.md").read_text()
    for line in r.stdout.split("\nnext:\n", 1)[1].splitlines():
        command = line.strip().split("   #")[0].strip()
        if command.startswith(("inferloop ", "curl ")):
            assert command in readme, f"the demo prints {command!r}, which the README does not show"
    return project


class Gateway:
    """`inferloop serve --model revenue-forecast` in the project directory: no --registry, so the
    project config the demo wrote decides which registry it serves."""

    def __init__(self, cwd: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"gateway-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-P", "-m", "inferloop.cli", "serve", "--model", MODEL,
                                          "--device", "cpu", "--cache-dir", "none"], cwd=cwd, env=_env(self.port),
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the gateway did not become ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


@pytest.fixture(scope="module")
def gateway(demo_dir: Path) -> Iterator[Gateway]:
    gw = Gateway(demo_dir)
    yield gw
    gw.stop()


def _run(block: Block, cwd: Path, port: int, bin_dir: Path) -> tuple[int, str]:
    env = _env(port)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    out_path = bin_dir / f"block-{port}.out"
    with open(out_path, "wb") as out:  # a file, not a pipe: a background server may outlive the block
        proc = subprocess.Popen(["bash", "-c", _script(block, port)], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=240)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # what the block left running in the background
            except ProcessLookupError:
                pass
    return code, out_path.read_text(errors="replace")


def test_the_docs_mark_the_examples_that_must_run() -> None:
    marked = {b.doc for b in BLOCKS}
    assert {"README.md", "docs/gateway.md"} <= marked, marked
    assert any("locust" in b.text for b in BLOCKS)  # the README's load test against the demo's gateway
    for block in BLOCKS:
        assert block.kind in ("", "gateway"), block.id


@needs_curl
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_marked_example_runs_against_the_demo(block: Block, demo_dir: Path, bin_dir: Path,
                                             request: pytest.FixtureRequest) -> None:
    if block.kind == "gateway":
        port = request.getfixturevalue("gateway").port
    else:
        port = _free_port()
    code, out = _run(block, demo_dir, port, bin_dir)
    assert code == 0, f"{block.id} failed ({code}):\n{block.text}\n--- output ---\n{out[-4000:]}"


def test_the_demo_registry_is_what_the_commands_see(demo_dir: Path) -> None:
    """`inferloop registry list` / `show` with no flags, in the demo's directory: the demo's model."""
    def cli(*argv: str) -> str:
        r = subprocess.run([sys.executable, "-P", "-m", "inferloop.cli", *argv], cwd=demo_dir, env=_env(0),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert MODEL in cli("registry", "list") and "production  2" in cli("registry", "show", MODEL)
    events = json.loads(cli("registry", "history", MODEL, "--limit", "1000", "--json"))
    kinds = [e["kind"] for e in events]
    assert kinds.count("retrain_requested") == 1  # once per job (the trainer's record), not once per writer
    assert [e["version"] for e in events if e["stage"] == "shadow" and e["kind"] == "promoted"] == [2]  # v1: never


def test_the_gateway_log_and_headers_a_newcomer_reads(gateway: Gateway) -> None:
    log = gateway.log.read_text()
    assert f"{MODEL} production: now serving v2 (first version" in log and "vNone" not in log
    r = httpx.get(f"{gateway.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].count("charset") == 1, r.headers
