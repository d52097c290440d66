"""What shadow traffic and drift monitoring cost the primary, measured in one run.

    python -m loadtests.bench_loop [--runs 3 --duration 5]

Gateways (all `inferloop serve`, same 8→64→64→1 MLP in production, pinned to one core; wrk on the
other), each on its own registry so they run side by side and their runs interleave:

    base        drift off, shadow off
    drift       drift on (the default), shadow off              → drift bookkeeping cost (target < 5 %)
    shadow      drift on, same-size shadow, 100 % sampled, default budget (25 %)
    shadow-all  same-size shadow, budget 100 % (every mirrored batch runs)
    shadow-slow drift on, a 20x slower shadow (8→288→288→1), default budget

Two loads: saturation (closed loop, 64 connections: max throughput) and a fixed rate of about half
of `base`'s maximum (wrk's per-request `delay()`; the achieved rate is reported), where the question
is the primary's p99. Every figure is also a ratio to `base` in the same run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from .bench_gateway import LUA, MODEL, Sample, start, wrk

SCENARIOS = {
    "base": (None, ["--drift", "off", "--shadow", "off"]),
    "drift": (None, ["--drift", "on", "--shadow", "off"]),
    "shadow": ([64, 64], ["--drift", "on", "--shadow", "on"]),
    "shadow-all": ([64, 64], ["--drift", "on", "--shadow", "on", "--shadow-budget", "1.0"]),
    "shadow-slow": ([288, 288], ["--drift", "on", "--shadow", "on"]),
}


def make_registry(root: Path, shadow_hidden: list[int] | None) -> str:
    import torch

    from inferloop.registry import MLP, Registry

    uri = f"file://{root / 'registry'}"
    x = torch.randn(2048, 8, generator=torch.Generator().manual_seed(1))
    with Registry.open(uri) as reg:
        torch.manual_seed(0)
        with reg.track(MODEL, actor="bench") as run:
            v1 = run.register(MLP(8, 1, [64, 64]), example_inputs=x[:8], reference=x)
        reg.promote(MODEL, v1, "production", actor="bench")
        if shadow_hidden:
            torch.manual_seed(1)
            with reg.track(MODEL, actor="bench") as run:
                v2 = run.register(MLP(8, 1, shadow_hidden), example_inputs=x[:8], reference=x)
            reg.promote(MODEL, v2, "shadow", actor="bench")
    return uri


def script(path: Path, delay_ms: int | None) -> Path:
    """bench_gateway's wrk script; with `delay_ms`, each connection waits that long between requests."""
    path.write_text(LUA + (f"function delay() return {delay_ms} end\n" if delay_ms else ""))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--client-core", default="0")
    p.add_argument("--server-core", default="1")
    p.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS-loop.md"))
    args = p.parse_args(argv)
    command = "python -m loadtests.bench_loop " + shlex.join(argv if argv is not None else sys.argv[1:])
    procs = {}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        try:
            urls = {}
            for name, (hidden, flags) in SCENARIOS.items():
                root = tmp / name
                root.mkdir()
                uri = make_registry(root, hidden)
                cmd = [sys.executable, "-m", "inferloop.cli", "serve", "--registry", uri, "--model", MODEL,
                       "--torch-threads", "1", "--cache-dir", str(root / "cache"), "--log-level", "warning",
                       "--poll-interval", "1", *flags]
                procs[name], urls[name] = start(name, cmd, args.server_core)
            closed = script(tmp / "closed.lua", None)
            for url in urls.values():  # warm-up (and let each shadow load)
                wrk(url, closed, args.client_core, args.connections, 2)
            sat: dict[str, list[Sample]] = {n: [] for n in SCENARIOS}
            for _ in range(args.runs):
                for name, url in urls.items():
                    sat[name].append(wrk(url, closed, args.client_core, args.connections, args.duration,
                                         procs[name].pid))
            base_max = statistics.median(s.rps for s in sat["base"])
            # fixed rate ≈ half of base's maximum: C connections each waiting `delay` ms between requests
            delay_ms = 10
            conns = max(1, round(base_max / 2 * delay_ms / 1000))
            fixed_script = script(tmp / "fixed.lua", delay_ms)
            fixed: dict[str, list[Sample]] = {n: [] for n in SCENARIOS}
            for _ in range(args.runs):
                for name, url in urls.items():
                    fixed[name].append(wrk(url, fixed_script, args.client_core, conns, args.duration))
        finally:
            for proc in procs.values():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    med = lambda xs, f: statistics.median(f(s) for s in xs)  # noqa: E731
    b_rps, b_p99 = med(sat["base"], lambda s: s.rps), med(fixed["base"], lambda s: s.p99_ms)
    lines = [
        "# Shadow and drift: cost to the primary", "", f"Command: `{command}`", "",
        f"{args.runs} interleaved runs × {args.duration:g} s per scenario and load, medians; wrk on core "
        f"{args.client_core}, gateways on core {args.server_core}. Saturation: {args.connections} connections, "
        f"closed loop. Fixed rate: {conns} connections × one request per {delay_ms} ms ≈ half of base's "
        f"maximum ({b_rps:.0f} req/s).", "",
        "| scenario | saturation req/s | × base | server CPU µs/req | fixed-rate req/s | p50 ms | p99 ms | p99 × base | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SCENARIOS:
        s_rps = med(sat[name], lambda s: s.rps)
        f_rps, f_p50, f_p99 = (med(fixed[name], f) for f in (lambda s: s.rps, lambda s: s.p50_ms,
                                                                lambda s: s.p99_ms))
        errors = sum(s.errors for s in sat[name] + fixed[name])
        lines.append(f"| {name} | {s_rps:.0f} | {s_rps / b_rps:.2f} | {med(sat[name], lambda s: s.cpu_us):.1f} | "
                     f"{f_rps:.0f} | {f_p50:.2f} | {f_p99:.2f} | {f_p99 / b_p99:.2f} | {errors} |")
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
