"""Gateway benchmark: single-row OIP v2 infer, the gateway against this machine's ceiling, one run.

Servers, all started here on 127.0.0.1 with the same tiny MLP (8 → 64 → 64 → 1) and the same body:
    (a) bare-constant    Litestar + msgspec + uvicorn handler: decode the body, answer a constant
    (b) bare-forward     the same handler plus one torch forward per request (inline)
    (c) gateway-batched  `inferloop serve`, micro-batching on
    (d) gateway-single   `inferloop serve --batching off`
    (e) gateway-no-freeze  (c) without `gc.freeze()` after start-up, to see what the freeze buys
    (f) gateway-baseline (c) run from another commit (`--baseline-ref REV`), so a change's cost is a
                         ratio measured in the same run; (g), (h), ... for a second, third ref given

Load: `wrk` (N connections, a Lua script for the POST body), pinned with `taskset` to
`--client-core` (default core 0; one wrk thread per core in that set) and every server to
`--server-core` (default core 1). Several short runs per server, interleaved in rotating order
so background load on a shared machine hits all of them alike; medians are reported with ratios to
(a). Only ratios measured in the same run mean anything.

    python -m loadtests.bench_gateway [--runs 5 --duration 5 --connections 64 --output FILE]

Concurrency sweep: `--connections 1,8,32,64,256` measures every level in the same run (all servers
stay up; within a level the runs are interleaved as above) and reports req/s, p50 and p99 per server
per level, the gateway's ratios to (a) and to (b), and issue 14's goals as met or missed.

`--gateway-ref REV` runs (c) (d) (e) from a commit instead of the working tree; `--baseline-ref REV`
adds (f) (repeat it to add (g), (h), ...: e.g. the commits on either side of each suspect change). Each is a `git worktree` of REV in the scratch directory (see loadtests/gateway_source.py
for how either layout of the packages is imported), with a registry written by its own code.

`--device cuda` runs every forward on the GPU: the gateways get `--device cuda`, (b) moves its model
and each request's input to the GPU and its output back. (a) does no forward, so it is the same
ceiling on either device. On a CUDA machine with spare cores, give the servers two cores (the
gateway's event loop and its device thread each get one) and the client several, e.g.
`--device cuda --client-core 0-3 --server-core 4-5` (scripts/gpu_bench.sh does this).
"""

from __future__ import annotations

import argparse
import contextlib
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

from . import gateway_source

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
    "gateway-baseline": "(f) gateway from --baseline-ref, batching on",
}
GATEWAYS = ("gateway-batched", "gateway-single", "gateway-no-freeze")
MAX_BASELINES = 5


def baseline_name(index: int) -> str:
    """Server name of the index-th (0-based) --baseline-ref: gateway-baseline, gateway-baseline-2, ..."""
    return "gateway-baseline" if index == 0 else f"gateway-baseline-{index + 1}"


def label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    index = int(name.rsplit("-", 1)[1])
    return f"({'fghij'[index - 1]}) gateway from --baseline-ref #{index}, batching on"


def baseline_names(results: dict[str, list[Sample]]) -> list[str]:
    return [n for n in results if n.startswith("gateway-baseline")]
SWEEP_DEFAULT = "1,8,32,64,256"


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


def connection_levels(text: str) -> list[int]:
    """`--connections`: one count ("64") or a sweep ("1,8,32,64,256"), each level once, in order given."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1 or len(set(levels)) != len(levels):
        raise argparse.ArgumentTypeError(f"expected distinct positive counts such as 64 or {SWEEP_DEFAULT}, "
                                         f"got {text!r}")
    return levels


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
    """The benchmark registry written in this process by the working tree's registry."""
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


def server_commands(uri: str, root: Path, extra_gateway: list[str], device: str = "cpu", *,
                    gateway_uri: str | None = None, baseline_uri: str | None = None,
                    baseline_uris: list[str] | None = None) -> dict[str, list[str]]:
    """Each server's command line; the gateways read `gateway_uri` when their code comes from another
    tree (each tree's registry is written by its own code), (f) is included with `baseline_uri`, (f) (g)
    ... with `baseline_uris`."""
    def gateway(registry: str, cache: str) -> list[str]:
        return [sys.executable, "-m", "inferloop.cli", "serve", "--registry", registry, "--model", MODEL,
                "--torch-threads", "1", "--cache-dir", str(root / cache), "--log-level", "warning",
                "--device", device, *extra_gateway]
    ours = gateway(gateway_uri or uri, "cache")
    bare = [sys.executable, "-m", "loadtests.bare_server", "--registry", uri, "--model", MODEL, "--device", device]
    commands = {
        "bare-constant": [*bare, "--mode", "constant"],
        "bare-forward": [*bare, "--mode", "forward"],
        "gateway-batched": [*ours, "--batching", "on"],
        "gateway-single": [*ours, "--batching", "off"],
        "gateway-no-freeze": [*ours, "--batching", "on", "--no-gc-freeze"],
    }
    uris = [baseline_uri] if baseline_uri is not None else []
    for i, base in enumerate(uris + list(baseline_uris or [])):
        commands[baseline_name(i)] = [*gateway(base, f"cache-baseline-{i + 1}"), "--batching", "on"]
    return commands


def start(name: str, cmd: list[str], core: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", core, *cmd, "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, **(env or {})},
                            cwd=cwd)
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


def per_run(results: dict[str, list[Sample]], name: str, ref: str, attr: str = "rps") -> float:
    """Median over runs of this server's figure over `ref`'s in the same run (the runs are
    interleaved, so a burst of background load tends to hit both sides of one ratio)."""
    return statistics.median(getattr(s, attr) / max(getattr(r, attr), 1e-9)
                             for s, r in zip(results[name], results[ref], strict=True))


def per_run_ratio(results: dict[str, list[Sample]], name: str) -> float:
    """Median over runs of this server's req/s over (a)'s in the same run."""
    return per_run(results, name, "bare-constant")


def core_word(cores: str) -> str:
    return "core" if core_count(cores) == 1 else "cores"


def _median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def _table(results: dict[str, list[Sample]]) -> list[str]:
    base = _median(results["bare-constant"], "rps")
    forward_p99 = _median(results["bare-forward"], "p99_ms")
    base_cpu = _median(results["bare-constant"], "cpu_us")
    lines = [
        "| server | req/s | × (a) | × (a) per run | server CPU µs/req | (a) CPU / this CPU | p50 ms | p99 ms | "
        "p99 vs (b) | errors | runs (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, samples in results.items():
        rps = _median(samples, "rps")
        p50 = _median(samples, "p50_ms")
        p99 = _median(samples, "p99_ms")
        runs = ", ".join(f"{s.rps:.0f}" for s in samples)
        cpu = _median(samples, "cpu_us")
        lines.append(f"| {label(name)} | {rps:.0f} | {rps / base:.2f} | {per_run_ratio(results, name):.2f} | "
                     f"{cpu:.1f} | {base_cpu / cpu if cpu else 0.0:.2f} | {p50:.2f} | {p99:.2f} | "
                     f"{p99 / forward_p99:.2f} | {sum(s.errors for s in samples)} | {runs} |")
    return lines


def _sources_line(sources: dict[str, str] | None) -> list[str]:
    if not sources:
        return []
    parts = [f"gateways (c)-(e) from the {sources['gateway']}"]
    for i, name in enumerate(n for n in sources if n.startswith("gateway-baseline")):
        parts.append(f"({'fghij'[i]}) from the {sources[name]}")
    return ["", "Code: " + "; ".join(parts) + "; (a) and (b) from the working tree."]


def _letter(name: str) -> str:
    return label(name)[:3]


def _baseline_line(results: dict[str, list[Sample]]) -> list[str]:
    if "gateway-batched" not in results:
        return []
    lines = []
    for base in baseline_names(results):
        rps, p50, p99 = (per_run(results, "gateway-batched", base, a) for a in ("rps", "p50_ms", "p99_ms"))
        lines += ["", f"(c) against {_letter(base)}, per run: req/s {rps:.2f} ×, p50 {p50:.2f} ×, p99 {p99:.2f} × "
                      f"(req/s above 1 and latency below 1: (c) is faster)."]
    return lines


def render(results: dict[str, list[Sample]], command: str, args: argparse.Namespace, load: tuple[str, str],
           device: str | None = None, sources: dict[str, str] | None = None) -> str:
    forward_p99 = _median(results["bare-forward"], "p99_ms")
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
        *_sources_line(sources),
        "",
        *_table(results),
    ]
    batched = results.get("gateway-batched")
    if batched:
        ratio = per_run_ratio(results, "gateway-batched")
        p99 = _median(batched, "p99_ms")
        lines += ["", f"Target: gateway (c) >= 0.70 × (a) at a p99 no worse than (b): throughput {ratio:.2f} × (a) per run "
                      f"({'met' if ratio >= 0.7 else 'NOT met'}), p99 {p99:.2f} ms vs (b) {forward_p99:.2f} ms "
                      f"({'met' if p99 <= forward_p99 else 'NOT met'})."]
    lines += _baseline_line(results)
    return "\n".join(lines) + "\n"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def goals(sweep: dict[int, dict[str, list[Sample]]]) -> list[str]:
    """Issue 14's goals that this driver can judge by itself, for the gateway (c) at each level
    measured; the ones against peers are bench_peers' to judge."""
    lines = []
    for level, results in sweep.items():
        if "gateway-batched" not in results:
            continue
        rps = per_run(results, "gateway-batched", "bare-constant")
        p50 = per_run(results, "gateway-batched", "bare-forward", "p50_ms")
        p50_ms, b50_ms = _median(results["gateway-batched"], "p50_ms"), _median(results["bare-forward"], "p50_ms")
        if level == 1:
            lines.append(f"- 1 connection: p50 ≤ 1.3 × (b)'s: {p50_ms:.3f} vs {b50_ms:.3f} ms, {p50:.2f} × per run "
                         f"({_verdict(p50 <= 1.3)}); req/s ≥ 0.7 × (a): {rps:.2f} × per run ({_verdict(rps >= 0.7)}).")
        elif level in (8, 32):
            lines.append(f"- {level} connections: req/s ≥ 1.0 × (a): {rps:.2f} × per run ({_verdict(rps >= 1.0)}); "
                         f"≥ 2 × the best peer: see bench_peers.")
        elif level in (64, 256):
            text = f"- {level} connections: {rps:.2f} × (a) per run, p99 {_median(results['gateway-batched'], 'p99_ms'):.2f} ms"
            if "gateway-baseline" in results:  # "before" is the first --baseline-ref
                vs = per_run(results, "gateway-batched", "gateway-baseline")
                p99 = per_run(results, "gateway-batched", "gateway-baseline", "p99_ms")
                text += (f"; no worse than before (±10 %): req/s {vs:.2f} × (f) per run ({_verdict(vs >= 0.9)}), "
                         f"p99 {p99:.2f} × (f)'s")
            else:
                text += "; no worse than before (±10 %): compare with earlier figures (or run with --baseline-ref)"
            lines.append(text + "; p99 below every peer's: see bench_peers.")
    return lines


def render_sweep(sweep: dict[int, dict[str, list[Sample]]], command: str, args: argparse.Namespace,
                 load: tuple[str, str], device: str | None = None, sources: dict[str, str] | None = None) -> str:
    levels = list(sweep)
    lines = [
        "# Gateway benchmark: concurrency sweep, single-row OIP v2 infer",
        "",
        f"Command: `{command}`",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} · {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}; wrk pinned to "
        f"{core_word(args.client_core)} {args.client_core} (one thread per core, at most one per connection), "
        f"servers to {core_word(args.server_core)} {args.server_core}; connections "
        f"{', '.join(map(str, levels))}, all servers up for the whole run; per level a {args.warmup:g} s warm-up "
        f"per server, then {args.runs} runs × {args.duration:g} s per server, interleaved in rotating order; "
        f"medians, and \"per run\": the median of each run's ratio within the same round. Load average "
        f"before/after: {load[0]} / {load[1]} (the machine is shared; compare ratios within a run).",
        *([] if device is None else ["", f"Device: forwards on {device}; (a) does no forward."]),
        *_sources_line(sources),
        "",
        "| connections | server | req/s | × (a) per run | p50 ms | p50 × (b) per run | p99 ms | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for level, results in sweep.items():
        for name, samples in results.items():
            lines.append(f"| {level} | {label(name)} | {_median(samples, 'rps'):.0f} | "
                         f"{per_run(results, name, 'bare-constant'):.2f} | {_median(samples, 'p50_ms'):.3f} | "
                         f"{per_run(results, name, 'bare-forward', 'p50_ms'):.2f} | {_median(samples, 'p99_ms'):.2f} | "
                         f"{sum(s.errors for s in samples)} |")
    if any(baseline_names(r) and "gateway-batched" in r for r in sweep.values()):
        lines += ["", "(c) against each baseline, per run (req/s above 1 and latency below 1: (c) is faster):", "",
                  "| connections | against | req/s (c) ÷ it | p50 (c) ÷ it | p99 (c) ÷ it |", "|---:|---|---:|---:|---:|"]
        for level, results in sweep.items():
            for base in baseline_names(results) if "gateway-batched" in results else []:
                ratios = (per_run(results, "gateway-batched", base, a) for a in ("rps", "p50_ms", "p99_ms"))
                lines.append(f"| {level} | {_letter(base)} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    found = goals(sweep)
    if found:
        lines += ["", "Goals (issue 14) for the gateway (c), as measured in this run:", "", *found]
    for level, results in sweep.items():
        lines += ["", f"## {level} connection{'s' if level > 1 else ''}", "", *_table(results)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of unmeasured load per server first (per level in a sweep)")
    p.add_argument("--connections", type=connection_levels, default=[64], metavar="N[,N...]",
                   help=f"wrk connections (default 64); several, e.g. {SWEEP_DEFAULT}, sweep them in one run")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the servers run their forward (cuda: the gateways get --device cuda)")
    p.add_argument("--client-core", default="0", help="taskset CPU list for wrk; one wrk thread per CPU in it")
    p.add_argument("--server-core", default="1", help="taskset CPU list for each server process")
    p.add_argument("--only", nargs="*", choices=[n for n in LABELS if n != "gateway-baseline"],
                   help="subset of servers ((a) and (b) always run, (f) with --baseline-ref)")
    p.add_argument("--gateway-arg", action="append", default=[],
                   help="extra flag for `inferloop serve` (repeat; (f) gets it too)")
    p.add_argument("--gateway-ref", metavar="REV", help="run (c) (d) (e) from this commit, not the working tree")
    p.add_argument("--baseline-ref", metavar="REV", action="append", default=[],
                   help="also run (f): the gateway (batching on) from this commit, in the same run "
                        f"(repeat for (g), (h), ...; at most {MAX_BASELINES})")
    p.add_argument("--output", type=Path, help="results file (default loadtests/RESULTS-gateway.md, "
                                               "RESULTS-gateway-sweep.md for several connection counts)")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    try:
        if len(args.baseline_ref) > MAX_BASELINES:
            raise ValueError(f"at most {MAX_BASELINES} --baseline-ref")
        for ref in (args.gateway_ref, *args.baseline_ref):
            if ref is not None:
                gateway_source.resolve(ref)
    except ValueError as exc:
        print(f"bench_gateway: {exc}", file=sys.stderr)
        return 2
    levels: list[int] = args.connections
    output = args.output or Path(__file__).with_name("RESULTS-gateway.md" if len(levels) == 1
                                                     else "RESULTS-gateway-sweep.md")
    device = None if args.device == "cpu" else device_description(args.device)  # fails here without CUDA
    command = "python -m loadtests.bench_gateway " + shlex.join(argv if argv is not None else sys.argv[1:])
    baselines = ["bare-constant", "bare-forward"]
    names = [n for n in GATEWAYS if not args.only or n in args.only]
    names = [*baselines, *names, *(baseline_name(i) for i in range(len(args.baseline_ref)))]
    with tempfile.TemporaryDirectory(prefix="inferloop-bench-") as tmp, contextlib.ExitStack() as trees:
        root = Path(tmp)
        script = root / "infer.lua"
        script.write_text(LUA)
        here = gateway_source.working_tree()
        ours = here
        if args.gateway_ref:
            (root / "gateway-src").mkdir()
            ours = trees.enter_context(gateway_source.checkout(args.gateway_ref, root / "gateway-src"))
        bases = []
        for i, ref in enumerate(args.baseline_ref):
            (root / f"baseline-src-{i + 1}").mkdir()
            bases.append(trees.enter_context(gateway_source.checkout(ref, root / f"baseline-src-{i + 1}")))
        for source in (ours, *bases):
            if source is not here:
                gateway_source.verify(source)  # a checkout's parts import from the checkout
        uri = gateway_source.make_registry(here, root / "registry")
        commands = server_commands(
            uri, root, args.gateway_arg, args.device,
            gateway_uri=None if ours is here else gateway_source.make_registry(ours, root / "registry-gateway"),
            baseline_uris=[gateway_source.make_registry(base, root / f"registry-baseline-{i + 1}")
                           for i, base in enumerate(bases)])
        placed = ({n: here for n in baselines} | {n: ours for n in GATEWAYS}
                  | {baseline_name(i): base for i, base in enumerate(bases)})
        sources = {"gateway": ours.label} | {baseline_name(i): base.label for i, base in enumerate(bases)}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        sweep: dict[int, dict[str, list[Sample]]] = {}
        try:
            urls = {}
            for name in names:
                src = placed[name]
                procs[name], urls[name] = start(name, commands[name], args.server_core, src.env(), src.cwd)
            load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
            for level in levels:
                for name in names:
                    wrk(urls[name], script, args.client_core, level, args.warmup)
                results: dict[str, list[Sample]] = sweep.setdefault(level, {n: [] for n in names})
                for run in range(args.runs):
                    order = names[run % len(names):] + names[:run % len(names)]
                    for name in order:
                        sample = wrk(urls[name], script, args.client_core, level, args.duration, procs[name].pid)
                        results[name].append(sample)
                        print(f"c{level:<4d} run {run + 1}/{args.runs} {name:17s} {sample.rps:8.0f} req/s  "
                              f"p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
                              f"cpu {sample.cpu_us:6.1f} us/req  errors {sample.errors}", flush=True)
            load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    shown = sources if (args.gateway_ref or args.baseline_ref) else None
    if len(levels) == 1:
        report = render(sweep[levels[0]], command, argparse.Namespace(**{**vars(args), "connections": levels[0]}),
                        (load_before, load_after), device, shown)
    else:
        report = render_sweep(sweep, command, args, (load_before, load_after), device, sources)
    print(report)
    output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
