"""Builders for the trainer tests: tiny datasets and policies, the CLI in-process, a real local HTTP
receiver for notifications, and a real uvicorn server in a thread on a pre-bound socket."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from inferloop.cli import main as cli_main
from inferloop.trainer.synthetic import CLASSIFICATION_FEATURES, REGRESSION_FEATURES, generate

from .gateway_harness import eventually as wait_for  # the one polling helper, under its old name

TINY_DAYS, TINY_ROWS = 6, 250


def make_data(root: Path, kind: str = "regression", **kwargs: Any) -> Path:
    out = root / f"data-{kind}"
    generate(out, kind=kind, days=kwargs.pop("days", TINY_DAYS), rows_per_day=kwargs.pop("rows_per_day", TINY_ROWS),
             **kwargs)
    return out


def policy_dict(data: Path, *, kind: str = "regression", model: str = "rev", **training: Any) -> dict[str, Any]:
    """A small, fast policy (3 epochs on ~1.5k rows) for `data`; `training` overrides keys."""
    features = REGRESSION_FEATURES if kind == "regression" else CLASSIFICATION_FEATURES
    validation = ({"max_rmse": 80.0} if kind == "regression" else {"min_f1": 0.6}) | {
        "compare_to": "production", "tolerance": -1.0 if kind == "regression" else -0.01,
        "promote_on_pass": "staging"}
    return {
        "model": model,
        "training": {
            "data": {"source": str(data), "latest": 4},
            "features": features, "target": "revenue" if kind == "regression" else "churned",
            "kind": "regression" if kind == "regression" else "binary",
            "hidden": [16], "lr": 0.01, "epochs": 3, "batch_size": 64, "seed": 3, **training,
        },
        "validation": validation,
    }


def write_policy(path: Path, policy: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """`inferloop ARGV` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that records every POSTed JSON body by path."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append((self.path, json.loads(body or b"null")))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class ServerThread:
    """uvicorn serving `app` in a thread; the socket is bound before start, so no port race."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
