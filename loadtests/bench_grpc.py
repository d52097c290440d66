"""gRPC vs REST on the same gateway: one `inferloop serve --port P --grpc-port G` process, the same
model (MLP 8→64→64→1, `make_registry`), the same client machine, the protocols taking turns in each
round so machine noise falls on all of them alike. Requests: single rows and 1,024-row batches;
REST as JSON and as Triton's binary tensor extension, gRPC with raw contents (what tritonclient
sends). Measured per protocol: requests/s, p50 and p99 latency (client side), and the server's CPU
time per request (its /proc utime+stime over the requests it answered). Reported as ratios to REST
JSON within the run: absolute numbers on a shared machine mean little.

    python -m loadtests.bench_grpc [--seconds 5] [--rounds 3] [--concurrency 8] [--core 1] [--peer mlserver]

With `--peer mlserver`, a Triton-compatible peer's gRPC endpoint is measured in the same run: MLServer
from the peer benchmark's venv (`loadtests/.venvs/mlserver`, `python -m loadtests.bench_peers --setup`)
in that benchmark's best configuration (inference in the server process, no debug log), on the same
weights (MLP 8→64→64→1 from torch seed 0, checked: both answer the same batch alike), pinned to the
same core. Both servers are then called by the same client, tritonclient.grpc.aio (raw contents, one
channel, `concurrency` RPCs at a time), and a second table gives MLServer's numbers as ratios to the
gateway's under that client.

The clients are one asyncio process (grpc.aio on one HTTP/2 channel; REST on `concurrency`
keep-alive HTTP/1.1 connections); with `--core`, the server is pinned to that core and the client
to the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.gateway_source import make_registry, working_tree

MODEL = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rest_bodies(rows: np.ndarray) -> dict[str, bytes]:
    path = f"/v2/models/{MODEL}/infer"
    data = json.dumps({"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}]}).encode()
    json_req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode() + data
    raw = rows.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary_req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                  f"Inference-Header-Content-Length: {len(header)}\r\n"
                  f"Content-Length: {len(header) + len(raw)}\r\n\r\n").encode() + header + raw
    return {"rest-json": json_req, "rest-binary": binary_req}


async def _rest_worker(port: int, request: bytes, until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace") + (await reader.readexactly(length)).decode())
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _grpc_workers(port: int, rows: np.ndarray, until: float, concurrency: int) -> list[float]:
    import grpc

    from inferloop.gateway.transport.grpc_messages import pb

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype("<f4").tobytes())
    body = request.SerializeToString()
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in and out

        async def worker() -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                await infer(body)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def _tritonclient_workers(port: int, rows: np.ndarray, until: float, concurrency: int) -> list[float]:
    """The same client for every server: tritonclient.grpc.aio, which sends raw contents."""
    import tritonclient.grpc.aio as tga

    latencies: list[float] = []
    client = tga.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = tga.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    try:
        async def worker() -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                await client.infer(MODEL, [tensor])
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return latencies


async def _answer(port: int, rows: np.ndarray) -> np.ndarray:
    """One tritonclient answer (the model's single output, whatever its name)."""
    import tritonclient.grpc.aio as tga

    client = tga.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = tga.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    try:
        result = await client.infer(MODEL, [tensor])
        name = result.get_response().outputs[0].name
        return np.asarray(result.as_numpy(name), dtype=np.float32).reshape(-1)
    finally:
        await client.close()


async def _run(kind: str, ports: tuple[int, int, int], rows: np.ndarray, seconds: float, concurrency: int
               ) -> list[float]:
    until = time.perf_counter() + seconds
    if kind == "grpc-raw":
        return await _grpc_workers(ports[1], rows, until, concurrency)
    if kind in ("grpc-tritonclient", "mlserver-grpc-tritonclient"):
        return await _tritonclient_workers(ports[1] if kind == "grpc-tritonclient" else ports[2], rows, until,
                                           concurrency)
    latencies: list[float] = []
    request = _rest_bodies(rows)[kind]
    await asyncio.gather(*(_rest_worker(ports[0], request, until, latencies) for _ in range(concurrency)))
    return latencies


def _wait_ready(url: str, server: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError(f"{what} did not become ready")
        time.sleep(0.2)


def _start_mlserver(work: Path, core: str | None) -> tuple[subprocess.Popen[bytes], int]:
    """MLServer as the peer benchmark starts it in its best configuration, on the weights the
    gateway serves (`make_registry`'s: MLP 8→64→64→1 from torch seed 0). Returns it and its gRPC port."""
    import torch

    from inferloop.registry.architectures import MLP
    from inferloop.registry.artifact import save_module
    from loadtests.peers import configs, venvs

    if not venvs.python_of("mlserver").exists():
        raise SystemExit("no MLServer venv: run `python -m loadtests.bench_peers --setup` first")
    torch.manual_seed(0)
    weights = work / "bench.safetensors"
    weights.write_bytes(save_module(MLP(8, 1, [64, 64]).eval())[0])
    ctx = configs.Context(work, weights, [0.0] * 8)
    home = work / "mlserver"
    home.mkdir()
    http_port = _free_port()
    launch = configs.mlserver(best=True, batching=False)(ctx, home, http_port)
    grpc_port = int(json.loads((home / "settings.json").read_text())["grpc_port"])
    cmd = launch.cmd if core is None else ["taskset", "-c", core, *launch.cmd]
    server = subprocess.Popen(cmd, env=launch.env, cwd=launch.cwd, stdout=subprocess.DEVNULL,
                              stderr=open(work / "mlserver.log", "wb"))
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", server, "MLServer", launch.ready_timeout)
    except RuntimeError:
        server.kill()
        raise RuntimeError("MLServer did not become ready: " + (work / "mlserver.log").read_text()[-2000:]) from None
    return server, grpc_port


def _table(results: dict[tuple[str, str], list[tuple[float, float, float, float]]], sizes: dict[str, int],
           kinds: list[str], base_kind: str) -> None:
    print(f"| rows | protocol | req/s | p50 ms | p99 ms | server CPU µs/req | vs {base_kind}: req/s, p50, p99, CPU |")
    print("|---|---|---|---|---|---|---|")
    for label in sizes:
        base = np.median(np.asarray(results[(label, base_kind)]), axis=0)
        for kind in kinds:
            m = np.median(np.asarray(results[(label, kind)]), axis=0)  # median over rounds, per column
            ratio = m / base
            print(f"| {label} | {kind} | {m[0]:.0f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.0f} | "
                  f"{ratio[0]:.2f}x, {ratio[1]:.2f}x, {ratio[2]:.2f}x, {ratio[3]:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--core", help="pin the server to this core (the client to the rest)")
    parser.add_argument("--peer", choices=["mlserver"], help="also measure this peer's gRPC endpoint, in the same run")
    args = parser.parse_args(argv)
    kinds = ["rest-json", "rest-binary", "grpc-raw"]
    peer_kinds = ["grpc-tritonclient", "mlserver-grpc-tritonclient"] if args.peer else []
    sizes = {"1 row": 1, "1,024 rows": 1024}
    with tempfile.TemporaryDirectory() as tmp:
        uri = make_registry(working_tree(), Path(tmp) / "registry", MODEL)
        port, grpc_port = _free_port(), _free_port()
        command = [sys.executable, "-m", "inferloop.cli", "serve", "--model", MODEL, "--registry", uri, "--port",
                   str(port), "--grpc-port", str(grpc_port), "--device", "cpu", "--shadow", "off", "--drift", "off",
                   "--cache-dir", "none", "--log-level", "warning"]
        if args.core is not None:
            command = ["taskset", "-c", args.core, *command]
            others = sorted(set(range(os.cpu_count() or 1)) - {int(args.core)})
            if others:
                os.sched_setaffinity(0, others)
        server = subprocess.Popen(command)
        peer: subprocess.Popen[bytes] | None = None
        peer_port = 0
        pids = {kind: server.pid for kind in kinds + peer_kinds}
        try:
            _wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", server, "the gateway")
            if args.peer:
                peer, peer_port = _start_mlserver(Path(tmp), args.core)
                pids["mlserver-grpc-tritonclient"] = peer.pid
                check = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
                ours, theirs = (asyncio.run(_answer(p, check)) for p in (grpc_port, peer_port))
                if not np.allclose(ours, theirs, atol=1e-4):
                    raise RuntimeError(f"the servers answer differently: {ours[:4]} vs {theirs[:4]}")
            ports = (port, grpc_port, peer_port)
            results: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
            for _round in range(args.rounds):
                for label, n in sizes.items():
                    rows = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
                    for kind in kinds + peer_kinds:
                        asyncio.run(_run(kind, ports, rows, 0.5, args.concurrency))  # warm-up
                        cpu0 = _cpu_seconds(pids[kind])
                        lat = asyncio.run(_run(kind, ports, rows, args.seconds, args.concurrency))
                        cpu = _cpu_seconds(pids[kind]) - cpu0
                        ms = np.asarray(lat) * 1000
                        results.setdefault((label, kind), []).append(
                            (len(lat) / args.seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                             cpu / len(lat) * 1e6))
        finally:
            for proc in (server, peer):
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
    _table(results, sizes, kinds + peer_kinds, "rest-json")
    if peer_kinds:
        print()
        _table(results, sizes, peer_kinds, "grpc-tritonclient")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
