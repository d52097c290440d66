"""Cost of the registry's operations against the raw store operation each one wraps, on both backends.

    python -m loadtests.bench_registry [--iterations 200]

Starts its own moto S3 server on 127.0.0.1. Prints medians per operation and the ratios
register / raw create-only put, promote / raw compare-and-swap put, poll (unchanged) / raw
conditional GET. Ratios, measured in one run, are what to compare across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifact_factory():
    from inferloop.registry.architectures import MLP
    from inferloop.registry.artifact import FORMAT, save_module
    from inferloop.registry.lineage import capture_code, capture_environment
    from inferloop.registry.manifest import ArtifactInfo, FeatureSpec, InputSignature, Lineage

    model = MLP(8, 1, [64, 64])
    data, spec = save_module(model)
    lineage = Lineage(code=capture_code(), environment=capture_environment())
    signature = InputSignature(features=[FeatureSpec(f"x{i}") for i in range(8)])

    def make(i: int):
        # a distinct artifact per iteration: flip bytes at the end of the tensor data
        blob = data[:-8] + i.to_bytes(8, "little")
        return blob, (lambda d, n: ArtifactInfo(d, n, FORMAT, spec)), lineage, signature

    return make, len(data)


async def _time(n: int, fn) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t)
    return out


async def bench(uri: str, n: int) -> dict[str, float]:
    from inferloop.registry import AsyncRegistry

    make, size = _artifact_factory()
    async with AsyncRegistry.open(uri) as core:
        await core.check()
        store = core.store
        payload = os.urandom(size)
        run = uuid.uuid4().hex[:8]
        raw_put = await _time(n, lambda i: store.put_if_absent(f"bench/{run}/raw/{i}", payload[:-8] + i.to_bytes(8, "little")))

        async def register(i: int) -> None:
            blob, info, lineage, sig = make(i)
            await core.register("bench", blob, info, lineage, sig)

        reg = await _time(n, register)
        key = f"bench/{run}/cas.json"
        etag = [await store.put_if_match(key, b'{"version":1}', None)]

        async def raw_cas(i: int) -> None:
            etag[0] = await store.put_if_match(key, b'{"version":%d}' % i, etag[0])

        cas = await _time(n, raw_cas)
        promote = await _time(n, lambda i: core.promote("bench", 1 + i % 2 if i else 2, "production", actor="bench"))
        state = await core.poll_pointer("bench", "production", None)
        raw_get = await _time(n, lambda i: store.get_if_changed("models/bench/stages/production.json", state.etag))
        poll = await _time(n, lambda i: core.poll_pointer("bench", "production", state.etag))
    med = {k: statistics.median(v) * 1e3 for k, v in
           {"raw_put": raw_put, "register": reg, "raw_cas": cas, "promote": promote, "raw_cond_get": raw_get,
            "poll": poll}.items()}
    return med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    port = _free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        import boto3

        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench-reg")
                break
            except Exception:  # noqa: BLE001 - server still starting
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            results = {"file": asyncio.run(bench(f"file://{tmp}/reg", args.iterations)),
                       "s3 (moto)": asyncio.run(bench("s3://bench-reg/r", args.iterations))}
    finally:
        moto.terminate()
    print(f"iterations per operation: {args.iterations}; medians in ms; ratio = registry op / raw store op\n")
    print("| backend | register | raw put-if-absent | ratio | promote | raw CAS put | ratio | poll (unchanged) | raw conditional GET | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backend, m in results.items():
        print(f"| {backend} | {m['register']:.2f} | {m['raw_put']:.2f} | {m['register'] / m['raw_put']:.1f}x "
              f"| {m['promote']:.2f} | {m['raw_cas']:.2f} | {m['promote'] / m['raw_cas']:.1f}x "
              f"| {m['poll']:.3f} | {m['raw_cond_get']:.3f} | {m['poll'] / m['raw_cond_get']:.2f}x |")
    _ = np  # numpy import keeps torch/numpy start-up out of the timed region


if __name__ == "__main__":
    main()
