"""Hot swap under load: p99 latency in the seconds around a swap against steady state, and failures.

    python -m loadtests.bench_swap [--rate 400 --seconds 24 --swaps 3]

Starts `inferloop serve` (pinned to one core) on a local registry with two versions of the
8→64→64→1 MLP, sends single-row OIP v2 requests at a fixed rate from an asyncio client (open loop:
requests are sent on schedule whether or not earlier ones returned), and moves production v1 → v2 →
v1 … through the admin endpoint at evenly spaced moments. Reports p50/p99 in a window from 0.5 s
before to 2 s after each swap against the rest of the run, the versions that answered, and every
failed request (the promise: zero).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from .bench_gateway import BODY, MODEL, free_port

TOKEN = "bench-swap-token"


def make_registry(root: Path) -> str:
    import torch

    from registry import MLP, Registry

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


async def drive(url: str, rate: float, seconds: float, swaps: int) -> tuple[list, list[float]]:
    results: list[tuple[float, float, int, str]] = []  # (sent at, latency s, status, version)
    swap_times: list[float] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        start = time.perf_counter()

        async def one(at: float) -> None:
            try:
                r = await client.post(f"{url}/v2/models/{MODEL}/infer", content=BODY,
                                      headers={"content-type": "application/json"})
                results.append((at, time.perf_counter() - start - at, r.status_code,
                                r.headers.get("x-model-version", "")))
            except httpx.HTTPError as exc:
                results.append((at, time.perf_counter() - start - at, 0, type(exc).__name__))

        async def swapper() -> None:
            for i in range(swaps):
                await asyncio.sleep(start + seconds * (i + 1) / (swaps + 1) - time.perf_counter())
                swap_times.append(time.perf_counter() - start)
                r = await client.post(f"{url}/admin/models/{MODEL}/promote", json={"version": 2 if i % 2 == 0 else 1},
                                      headers={"authorization": f"Bearer {TOKEN}"})
                assert r.status_code == 200, r.text

        tasks = [asyncio.create_task(swapper())]
        n = int(rate * seconds)
        for i in range(n):
            at = i / rate
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at)))
        await asyncio.gather(*tasks)
    return results, swap_times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=400)
    p.add_argument("--seconds", type=float, default=24)
    p.add_argument("--swaps", type=int, default=3)
    p.add_argument("--server-core", default="1")
    p.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS-swap.md"))
    args = p.parse_args(argv)
    command = "python -m loadtests.bench_swap " + shlex.join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        uri = make_registry(tmp)
        port = free_port()
        proc = subprocess.Popen(["taskset", "-c", args.server_core, sys.executable, "-m", "inferloop.cli", "serve",
                                 "--registry", uri, "--model", MODEL, "--port", str(port), "--torch-threads", "1",
                                 "--cache-dir", str(tmp / "cache"), "--poll-interval", "1", "--cache-versions", "0",
                                 "--log-level", "warning"], env={**os.environ, "INFERLOOP_ADMIN_TOKEN": TOKEN},
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(480):
                try:
                    if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
            asyncio.run(drive(url, args.rate, 2, 0))  # warm-up
            results, swaps = asyncio.run(drive(url, args.rate, args.seconds, args.swaps))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    at = np.array([r[0] for r in results])
    lat = np.array([r[1] for r in results]) * 1e3
    near = np.zeros(len(at), dtype=bool)
    for s in swaps:
        near |= (at >= s - 0.5) & (at <= s + 2.0)
    failed = [r for r in results if r[2] != 200]
    versions: dict[str, int] = {}
    for r in results:
        versions[r[3]] = versions.get(r[3], 0) + 1

    def pct(mask: np.ndarray) -> tuple[float, float]:
        return float(np.percentile(lat[mask], 50)), float(np.percentile(lat[mask], 99))

    s50, s99 = pct(~near)
    w50, w99 = pct(near)
    text = "\n".join([
        "# Hot swap under load", "", f"Command: `{command}`", "",
        f"{len(results)} single-row requests at {args.rate:g} req/s (open loop) over {args.seconds:g} s; "
        f"{len(swaps)} swaps (v1 → v2 → v1 …, `--cache-versions 0`: every swap loads and releases) through the "
        f"admin endpoint at {', '.join(f'{s:.1f}' for s in swaps)} s; the gateway pinned to core {args.server_core}.",
        "", "| window | requests | p50 ms | p99 ms | p99 × steady |", "|---|---:|---:|---:|---:|",
        f"| steady state | {int((~near).sum())} | {s50:.2f} | {s99:.2f} | 1.00 |",
        f"| 0.5 s before to 2 s after each swap | {int(near.sum())} | {w50:.2f} | {w99:.2f} | {w99 / s99:.2f} |",
        "", f"Failed requests: **{len(failed)}**. Answers per version: "
        + ", ".join(f"v{k}: {v}" for k, v in sorted(versions.items())) + ".", ""])
    args.output.write_text(text)
    print(text)
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
