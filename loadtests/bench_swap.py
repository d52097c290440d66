"""Hot swap under load: latency of runs with swaps against runs without, and failed requests.

    python -m loadtests.bench_swap [--runs 3 --seconds 12 --swaps 3]

Starts `inferloop serve` (pinned to one core) on a local registry with two versions of the
8→64→64→1 MLP (`--cache-versions 0`: every swap loads one version and releases the other) and drives
it with wrk (the other core, 64 connections, single-row OIP v2). Runs alternate: steady (no swap)
and swapping (production moved v1 → v2 → v1 … through the admin endpoint `--swaps` times during the
run). Reports medians of p50/p99 of each kind, their ratio, and every non-2xx or socket error (the
promise: zero).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .bench_gateway import LUA, MODEL, start, wrk

TOKEN = "bench-swap-token"


def make_registry(root: Path) -> str:
    import torch

    from inferloop.registry import MLP, Registry

    uri = f"file://{root / 'registry'}"
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(1))
    with Registry.open(uri) as reg:
        for seed in (0, 1):
            torch.manual_seed(seed)
            with reg.track(MODEL, actor="bench") as run:
                run.seed = seed
                run.register(MLP(8, 1, [64, 64]), example_inputs=x[:8], reference=x)
        reg.promote(MODEL, 1, "production", actor="bench")
    return uri


def swapper(url: str, seconds: float, swaps: int) -> threading.Thread:
    """Move production v1 → v2 → v1 … at evenly spaced moments of a run that starts now."""
    def run() -> None:
        t0 = time.monotonic()
        for i in range(swaps):
            time.sleep(max(0.0, t0 + seconds * (i + 1) / (swaps + 1) - time.monotonic()))
            r = httpx.post(f"{url}/admin/models/{MODEL}/promote", json={"version": 2 if i % 2 == 0 else 1},
                           headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
            assert r.status_code == 200, r.text

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--swaps", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--client-core", default="0")
    p.add_argument("--server-core", default="1")
    p.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS-swap.md"))
    args = p.parse_args(argv)
    command = "python -m loadtests.bench_swap " + shlex.join(argv if argv is not None else sys.argv[1:])
    steady, swapping = [], []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        uri = make_registry(tmp)
        script = tmp / "post.lua"
        script.write_text(LUA)
        proc, infer = start("gateway", [sys.executable, "-m", "inferloop.cli", "serve", "--registry", uri, "--model",
                                         MODEL, "--torch-threads", "1", "--cache-dir", str(tmp / "cache"),
                                         "--poll-interval", "1", "--cache-versions", "0", "--log-level", "warning"],
                            args.server_core, env={"INFERLOOP_ADMIN_TOKEN": TOKEN})
        url = infer.removesuffix(f"/v2/models/{MODEL}/infer")
        try:
            wrk(infer, script, args.client_core, args.connections, 3)  # warm-up
            for _ in range(args.runs):
                steady.append(wrk(infer, script, args.client_core, args.connections, args.seconds))
                mover = swapper(url, args.seconds, args.swaps)
                swapping.append(wrk(infer, script, args.client_core, args.connections, args.seconds))
                mover.join(120)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    med = lambda xs, f: statistics.median(f(x) for x in xs)  # noqa: E731
    s50, s99 = med(steady, lambda x: x.p50_ms), med(steady, lambda x: x.p99_ms)
    w50, w99 = med(swapping, lambda x: x.p50_ms), med(swapping, lambda x: x.p99_ms)
    errors = sum(x.errors for x in steady + swapping)
    text = "\n".join([
        "# Hot swap under load", "", f"Command: `{command}`", "",
        f"{args.runs} steady and {args.runs} swapping runs of {args.seconds:g} s, alternating; {args.swaps} swaps per "
        f"swapping run ({args.runs * args.swaps} in all, each a load + release); wrk with {args.connections} "
        f"connections on core {args.client_core}, the gateway on core {args.server_core}; medians.", "",
        "| runs | req/s | p50 ms | p99 ms | p99 × steady |", "|---|---:|---:|---:|---:|",
        f"| steady | {med(steady, lambda x: x.rps):.0f} | {s50:.2f} | {s99:.2f} | 1.00 |",
        f"| with swaps | {med(swapping, lambda x: x.rps):.0f} | {w50:.2f} | {w99:.2f} | {w99 / s99:.2f} |",
        "", f"Failed requests (non-2xx and socket errors, all runs): **{errors}**.", ""])
    args.output.write_text(text)
    print(text)
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
