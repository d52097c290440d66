"""Hot swap of a large model (about 400 MB of float32 weights, ~100 M parameters) under load.

    python -m loadtests.bench_large_swap [--swaps 20 --threads 4 --width 5000] [--device cuda]

Registers two versions of the same architecture (a torch.export program: 64 → width → width →
width → width → 1), starts `inferloop serve` with no standby versions (`--cache-versions 0`), sends
single-row requests from `--threads` clients, and moves production back and forth `--swaps` times
through the admin API. Reports failed requests (goal 0), p99 latency inside the swap windows
against steady p99 (goal ≤ 3×), and the gateway's RSS after the first load against its RSS after
the last swap (goal: back to one model). With `--device cuda` the gateway serves on the GPU, and the
same comparison is made for the GPU memory nvidia-smi reports for the gateway's process."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from torch import nn

from inferloop.registry import Registry

TOKEN = "bench-token"


def model(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 1)).eval()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gpu_mb(pid: int, smi_output: str | None = None) -> float:
    """GPU memory of process `pid` in MiB, as `nvidia-smi --query-compute-apps` lists it (NaN if absent)."""
    if smi_output is None:
        smi_output = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                     "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    used = [float(fields[1]) for fields in (line.split(",") for line in smi_output.splitlines())
            if len(fields) == 2 and fields[0].strip() == str(pid) and fields[1].strip().replace(".", "", 1).isdigit()]
    return sum(used) if used else float("nan")


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--swaps", type=int, default=20)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--width", type=int, default=5000)
    p.add_argument("--steady", type=float, default=10.0, help="seconds of load before the first swap")
    p.add_argument("--device", default="cpu", help="the gateway's --device (cpu, cuda, cuda:N)")
    args = p.parse_args()
    on_gpu = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="inferloop-large-") as tmp:
        uri = f"file://{tmp}/registry"
        started = time.perf_counter()
        with Registry.open(uri) as reg:
            versions = []
            for seed in (1, 2):
                with reg.track("large") as run:
                    versions.append(run.register(model(args.width, seed), example_inputs=torch.randn(2, 64)))
            size = reg.get_manifest("large", versions[0]).artifact.size
            reg.promote("large", versions[0], "production")
        print(f"registered 2 versions of {size / 2**20:.0f} MB in {time.perf_counter() - started:.1f}s", flush=True)
        port = 18400 + os.getpid() % 1000
        env = {**os.environ, "INFERLOOP_ADMIN_TOKEN": TOKEN}
        gateway = subprocess.Popen([sys.executable, "-P", "-m", "inferloop.cli", "serve", "--registry", uri,
                                    "--model", "large", "--port", str(port), "--cache-versions", "0",
                                    "--cache-dir", f"{tmp}/cache", "--log-level", "warning", "--admin-wait", "120",
                                    "--device", args.device],
                                   env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise SystemExit("the gateway did not become ready")
                time.sleep(0.5)
            rss_one = rss_mb(gateway.pid)
            gpu_one = gpu_mb(gateway.pid) if on_gpu else float("nan")
            samples: list[tuple[float, float]] = []  # (finished at, seconds)
            failures: list[str] = []
            stop = threading.Event()
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.1] * 64}]}

            def load() -> None:
                with httpx.Client(base_url=url, timeout=60) as client:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        try:
                            r = client.post("/v2/models/large/infer", json=body)
                            ok = r.status_code == 200
                        except httpx.HTTPError as exc:
                            ok, r = False, exc  # type: ignore[assignment]
                        t1 = time.perf_counter()
                        samples.append((t1, t1 - t0))
                        if not ok:
                            failures.append(str(r)[:200])

            threads = [threading.Thread(target=load) for _ in range(args.threads)]
            for t in threads:
                t.start()
            time.sleep(args.steady)
            steady_end = time.perf_counter()
            windows: list[tuple[float, float]] = []
            admin = httpx.Client(base_url=url, timeout=300, headers={"authorization": f"Bearer {TOKEN}"})
            for i in range(args.swaps):
                target = versions[(i + 1) % 2]
                w0 = time.perf_counter()
                r = admin.post("/admin/models/large/promote", json={"version": target})
                w1 = time.perf_counter()
                windows.append((w0, w1))
                if r.status_code != 200 or not r.json()["serving"]["applied"]:
                    failures.append(f"swap {i}: {r.status_code} {r.text[:200]}")
                time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(60)
            time.sleep(2.0)
            rss_after = rss_mb(gateway.pid)
            gpu_after = gpu_mb(gateway.pid) if on_gpu else float("nan")
        finally:
            gateway.terminate()
            gateway.wait(60)
    steady = [s for at, s in samples if at <= steady_end]
    in_swaps = [s for at, s in samples if any(w0 <= at <= w1 + 0.5 for w0, w1 in windows)]
    swap_seconds = [w1 - w0 for w0, w1 in windows]
    print(f"requests: {len(samples)}, failed: {len(failures)} {failures[:3]}")
    print(f"steady p99 {p99(steady) * 1e3:.1f} ms ({len(steady)} requests); in swap windows p99 "
          f"{p99(in_swaps) * 1e3:.1f} ms ({len(in_swaps)} requests): {p99(in_swaps) / p99(steady):.2f}× steady")
    print(f"swap (admin call until serving) median {statistics.median(swap_seconds):.2f}s, max {max(swap_seconds):.2f}s")
    print(f"gateway RSS after the first load {rss_one:.0f} MB, after {args.swaps} swaps {rss_after:.0f} MB "
          f"(model {size / 2**20:.0f} MB): {rss_after - rss_one:+.0f} MB")
    if on_gpu:
        print(f"gateway GPU memory (nvidia-smi) after the first load {gpu_one:.0f} MiB, after {args.swaps} swaps "
              f"{gpu_after:.0f} MiB: {gpu_after - gpu_one:+.0f} MiB")


if __name__ == "__main__":
    main()
