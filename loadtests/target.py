"""A self-contained load-test target: a prepared local registry with two tiny models (two versions
each, v1 in production) and `inferloop serve` on loopback, plus recorded request payloads.

    python -m loadtests.target [--port 8000]        # serves until Ctrl-C / SIGTERM

`loadtests/locustfile.py` starts this by itself when Locust is given no --host.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = {"tiny-regression": ("regression", 8), "tiny-churn": ("binary", 6)}
ADMIN_TOKEN = "loadtest-admin-token"


def prepare(root: Path) -> str:
    """Register two versions of each model (idempotent: identical builds dedupe), v1 in production."""
    import torch

    from inferloop.registry import MLP, Registry

    uri = f"file://{root / 'registry'}"
    with Registry.open(uri) as reg:
        for name, (kind, width) in MODELS.items():
            x = torch.from_numpy(np.random.default_rng(width).normal(size=(2048, width)).astype(np.float32))
            versions = []
            for seed in (1, 2):
                torch.manual_seed(seed)
                with reg.track(name, actor="loadtest") as run:
                    run.seed = seed
                    versions.append(run.register(MLP(width, 1, [32, 32]), example_inputs=x[:8], reference=x,
                                                 output_kind=kind))
            if reg.get_pointer(name, "production") is None:
                reg.promote(name, versions[0], "production", actor="loadtest", reason="load-test target")
    return uri


def record_payloads() -> None:
    """Recorded request bodies (single rows and small batches) the Locust users replay."""
    for name, (_, width) in MODELS.items():
        rng = np.random.default_rng(100 + width)
        rows = rng.normal(size=(256, width)).round(4).tolist()
        (HERE / "payloads" / f"{name}.json").write_text(json.dumps({"model": name, "width": width, "rows": rows}))


def serve(port: int, root: Path) -> subprocess.Popen[bytes]:
    uri = prepare(root)
    env = {**os.environ, "INFERLOOP_ADMIN_TOKEN": ADMIN_TOKEN}
    cmd = [sys.executable, "-m", "inferloop.cli", "serve", "--registry", uri, "--port", str(port),
           "--cache-dir", str(root / "cache"), "--poll-interval", "0.5", "--log-level", "warning"]
    for name in MODELS:
        cmd += ["--model", name]
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def wait_ready(port: int, timeout: float = 120) -> None:
    # urllib, not httpx: this also runs inside Locust, where gevent's patching breaks anyio's imports
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError("load-test gateway did not become ready")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--root", type=Path, default=Path(".inferloop/loadtest"))
    p.add_argument("--record", action="store_true", help="rewrite loadtests/payloads/*.json and exit")
    args = p.parse_args()
    if args.record:
        record_payloads()
        return 0
    proc = serve(args.port, args.root)

    def stop(*_: object) -> None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        wait_ready(args.port)
        print(f"load-test target ready on http://127.0.0.1:{args.port} (admin token {ADMIN_TOKEN})", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
