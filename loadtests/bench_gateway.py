"""Gateway benchmark: single-row OIP v2 infer, the gateway against this machine's ceiling, one run.

Servers, all started here on 127.0.0.1 with the same tiny MLP (8 → 64 → 64 → 1) and the same body:
    (a) bare-constant    Litestar + msgspec + uvicorn handler: decode the body, answer a constant
    (b) bare-forward     the same handler plus one torch forward per request (inline)
    (c) gateway-batched  `inferloop serve`, micro-batching on
    (d) gateway-single   `inferloop serve --batching off`
    (e) gateway-no-freeze  (c) without `gc.freeze()` after start-up, to see what the freeze buys

Load: `wrk` (N connections, a Lua script for the POST body), pinned with `taskset` to
`--client-core` (default core 0; one wrk thread per core in that set) and every server to
`--server-core` (default core 1). Several short runs per server, interleaved in rotating order
so background load on a shared machine hits all of them alike; medians are reported with ratios to
(a). Only ratios measured in the same run mean anything.

    python -m loadtests.bench_gateway [--runs 5 --duration 5 --connections 64 --output FILE]

`--device cuda` runs every forward on the GPU: the gateways get `--device cuda`, (b) moves its model
and each request's input to the GPU and its output back. (a) does no forward, so it is the same
ceiling on either device. On a CUDA machine with spare cores, give the servers two cores (the
gateway's event loop and its device thread each get one) and the client several, e.g.
`--device cuda --client-core 0-3 --server-core 4-5` (scripts/gpu_bench.sh does this).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

BODY = ('{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32",'
        '"data":[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]}]}')
MODEL = "bench"
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '@BODY@'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %.6f %d %d %d\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), e.status + e.connect + e.read + e.write + e.timeout))
end
""".replace("@BODY@", BODY)

LABELS = {
    "bare-constant": "(a) bare Litestar+msgspec, constant answer",
    "bare-forward": "(b) bare handler + one forward per request",
    "gateway-batched": "(c) gateway, batching on",
    "gateway-single": "(d) gateway, batching off",
    "gateway-no-freeze": "(e) gateway, batching on, no gc.freeze()",
}


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0  # server CPU time (all threads) per request: unaffected by other load on the core


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def core_count(cores: str) -> int:
    """Number of CPUs in a taskset list such as "0", "0-3" or "0,2,4-5"."""
    total = 0
    for part in cores.split(","):
        lo, _, hi = part.strip().partition("-")
        total += int(hi) - int(lo) + 1 if hi else 1
    return total


def device_description(device: str) -> str:
    """What the servers ran their forward on, with the torch version: `cuda (NVIDIA H200), torch 2.11.0+cu130`."""
    import torch

    name = device
    if device.startswith("cuda"):
        name = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{name}, torch {torch.__version__}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_registry(root: Path) -> str:
    import torch

    from inferloop.registry import MLP, Registry

    uri = f"file://{root / 'registry'}"
    torch.manual_seed(0)
    model = MLP(8, 1, [64, 64])
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(1))
    with Registry.open(uri) as reg:
        with reg.track(MODEL, actor="bench") as run:
            version = run.register(model, example_inputs=x[:8], reference=x)
        reg.promote(MODEL, version, "production", actor="bench")
    return uri


def server_commands(uri: str, root: Path, extra_gateway: list[str], device: str = "cpu") -> dict[str, list[str]]:
    gateway = [sys.executable, "-m", "inferloop.cli", "serve", "--registry", uri, "--model", MODEL,
               "--torch-threads", "1", "--cache-dir", str(root / "cache"), "--log-level", "warning",
               "--device", device, *extra_gateway]
    bare = [sys.executable, "-m", "loadtests.bare_server", "--registry", uri, "--model", MODEL, "--device", device]
    return {
        "bare-constant": [*bare, "--mode", "constant"],
        "bare-forward": [*bare, "--mode", "forward"],
        "gateway-batched": [*gateway, "--batching", "on"],
        "gateway-single": [*gateway, "--batching", "off"],
        "gateway-no-freeze": [*gateway, "--batching", "on", "--no-gc-freeze"],
    }


def start(name: str, cmd: list[str], core: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", core, *cmd, "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            r = httpx.post(url, content=BODY, headers={"content-type": "application/json"}, timeout=2)
            if r.status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise RuntimeError(f"{name} did not become ready")


def wrk(url: str, script: Path, core: str, connections: int, seconds: float, pid: int | None = None) -> Sample:
    cpu_before = cpu_seconds(pid) if pid else 0.0
    threads = max(1, min(core_count(core), connections))  # one wrk thread per client core
    out = subprocess.run(["taskset", "-c", core, "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    requests, duration, p50, p99, errors = line.split()[1:]
    cpu = (cpu_seconds(pid) - cpu_before) / max(int(requests), 1) * 1e6 if pid else 0.0
    return Sample(int(requests) / float(duration), int(p50) / 1000, int(p99) / 1000, int(errors), cpu)


def per_run_ratio(results: dict[str, list[Sample]], name: str) -> float:
    """Median over runs of this server's req/s over (a)'s in the same run (the runs are interleaved,
    so a burst of background load tends to hit both sides of one ratio)."""
    return statistics.median(s.rps / a.rps for s, a in zip(results[name], results["bare-constant"], strict=True))


def core_word(cores: str) -> str:
    return "core" if core_count(cores) == 1 else "cores"


def render(results: dict[str, list[Sample]], command: str, args: argparse.Namespace, load: tuple[str, str],
           device: str | None = None) -> str:
    base = statistics.median(s.rps for s in results["bare-constant"])
    forward_p99 = statistics.median(s.p99_ms for s in results["bare-forward"])
    base_cpu = statistics.median(s.cpu_us for s in results["bare-constant"])
    threads = max(1, min(core_count(args.client_core), args.connections))
    client = f"wrk pinned to {core_word(args.client_core)} {args.client_core}"
    if threads > 1:
        client = f"wrk ({threads} threads) pinned to cores {args.client_core}"
    lines = [
        "# Gateway benchmark: single-row OIP v2 infer",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}; {client}, servers to {core_word(args.server_core)} {args.server_core}; "
        f"{args.connections} connections, {args.runs} runs × {args.duration:g} s per server, interleaved; medians "
        f"(\"per run\": the median of each run's ratio to (a) in the same round). Server CPU µs/req is the "
        f"server process's CPU time (all threads, /proc) per answered request: less sensitive to other load than "
        f"req/s (though contention still inflates it), its ratio estimates the throughput ratio on a quiet core. "
        f"Load average before/after: {load[0]} / {load[1]} (the machine is shared; compare ratios within a run).",
        *([] if device is None else ["", f"Device: forwards on {device}; (a) does no forward."]),
        "",
        "| server | req/s | × (a) | × (a) per run | server CPU µs/req | (a) CPU / this CPU | p50 ms | p99 ms | "
        "p99 vs (b) | errors | runs (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, samples in results.items():
        rps = statistics.median(s.rps for s in samples)
        p50 = statistics.median(s.p50_ms for s in samples)
        p99 = statistics.median(s.p99_ms for s in samples)
        runs = ", ".join(f"{s.rps:.0f}" for s in samples)
        cpu = statistics.median(s.cpu_us for s in samples)
        lines.append(f"| {LABELS[name]} | {rps:.0f} | {rps / base:.2f} | {per_run_ratio(results, name):.2f} | "
                     f"{cpu:.1f} | {base_cpu / cpu:.2f} | {p50:.2f} | {p99:.2f} | {p99 / forward_p99:.2f} | "
                     f"{sum(s.errors for s in samples)} | {runs} |")
    batched = results.get("gateway-batched")
    if batched:
        ratio = per_run_ratio(results, "gateway-batched")
        p99 = statistics.median(s.p99_ms for s in batched)
        lines += ["", f"Target: gateway (c) >= 0.70 × (a) at a p99 no worse than (b): throughput {ratio:.2f} × (a) per run "
                      f"({'met' if ratio >= 0.7 else 'NOT met'}), p99 {p99:.2f} ms vs (b) {forward_p99:.2f} ms "
                      f"({'met' if p99 <= forward_p99 else 'NOT met'})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load per server first")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the servers run their forward (cuda: the gateways get --device cuda)")
    p.add_argument("--client-core", default="0", help="taskset CPU list for wrk; one wrk thread per CPU in it")
    p.add_argument("--server-core", default="1", help="taskset CPU list for each server process")
    p.add_argument("--only", nargs="*", choices=list(LABELS), help="subset of servers ((a) and (b) always run)")
    p.add_argument("--gateway-arg", action="append", default=[], help="extra flag for `inferloop serve` (repeat)")
    p.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS-gateway.md"))
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    device = None if args.device == "cpu" else device_description(args.device)  # fails here without CUDA
    command = "python -m loadtests.bench_gateway " + shlex.join(argv if argv is not None else sys.argv[1:])
    baselines = ["bare-constant", "bare-forward"]
    names = list(LABELS) if not args.only else [*baselines, *[n for n in LABELS if n in args.only and
                                                             n not in baselines]]
    with tempfile.TemporaryDirectory(prefix="inferloop-bench-") as tmp:
        root = Path(tmp)
        script = root / "infer.lua"
        script.write_text(LUA)
        commands = server_commands(make_registry(root), root, args.gateway_arg, args.device)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            urls = {}
            for name in names:
                procs[name], urls[name] = start(name, commands[name], args.server_core)
                wrk(urls[name], script, args.client_core, args.connections, args.warmup)
            load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
            results: dict[str, list[Sample]] = {n: [] for n in names}
            for run in range(args.runs):
                order = names[run % len(names):] + names[:run % len(names)]
                for name in order:
                    sample = wrk(urls[name], script, args.client_core, args.connections, args.duration,
                                 procs[name].pid)
                    results[name].append(sample)
                    print(f"run {run + 1}/{args.runs} {name:17s} {sample.rps:8.0f} req/s  p50 {sample.p50_ms:6.2f} ms  "
                          f"p99 {sample.p99_ms:6.2f} ms  cpu {sample.cpu_us:6.1f} us/req  errors {sample.errors}",
                          flush=True)
            load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    report = render(results, command, args, (load_before, load_after), device)
    print(report)
    args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
