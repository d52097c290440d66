"""Side by side: the gateway against the serving systems a user would pick instead, in one run,
on the same model (float32 MLP 8→64→64→1, one set of weights) and the same single-row request.

    python -m loadtests.bench_peers --setup                       # creates missing venvs, then measures
    python -m loadtests.bench_peers --only fastapi,ray --duration 5 --runs 1

Each peer runs from its own virtual environment under loadtests/.venvs/<peer> (created with
--setup: torch==2.13.0 first, then the peer from PyPI). The bare ceiling (a minimal Litestar +
msgspec + uvicorn handler) and the gateway run in the project's environment; the gateway in four
configurations: batching off, batching on (its defaults, drift on), drift off, and a same-size
shadow mirrored at 100 % with a 100 % budget. wrk is pinned to CPU 0,
the server under test (its whole process tree) to CPU 1. Per configuration: a warm-up, then --runs
runs of --duration seconds, each after a run of the bare ceiling (kept up for the whole run); medians
of throughput and p50/p99, the server tree's RSS after the runs, and every figure as a ratio to the
ceiling's runs taken alongside. Writes the table to
loadtests/RESULTS-peers.md. A server that cannot be installed or started is recorded with the reason.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .peers import configs, procs, venvs, wrk
from .peers.configs import CONFIGS, Config, Context
from .peers.report import Result, failures, raw_runs, table

LOADGEN_CPU, SERVER_CPU = "0", "1"
RESULTS = Path(__file__).resolve().parent / "RESULTS-peers.md"


def prepare(work: Path, with_gateway: bool) -> tuple[Context, float]:
    """The weights (fixed seed, safetensors), the request row, and the expected answer."""
    import numpy as np
    import torch

    from inferloop.registry.architectures import MLP
    from inferloop.registry.artifact import save_module

    torch.manual_seed(0)
    model = MLP(8, 1, [64, 64]).eval()
    data, _ = save_module(model)
    weights = work / "bench.safetensors"
    weights.write_bytes(data)
    row = [round(float(v), 4) for v in np.random.default_rng(1).normal(size=8)]
    with torch.inference_mode():
        expected = float(model(torch.tensor([row]))[0, 0])
    ctx = Context(work, weights, row)
    if with_gateway:
        ctx.registry = work / "registry"
        register(ctx.registry, model)
    return ctx, expected


def register(root: Path, model) -> None:
    import torch

    from inferloop.registry import Registry
    from inferloop.registry.architectures import MLP

    reg = Registry.open(f"file://{root}")
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(2))
    with reg.track("bench") as run:
        version = run.register(model, example_inputs=x[:8], reference=x)
    reg.promote("bench", version, "production")
    torch.manual_seed(1)  # the shadow: same size, other weights (only the shadow configuration serves it)
    with reg.track("bench") as run:
        shadow = run.register(MLP(8, 1, [64, 64]).eval(), example_inputs=x[:8], reference=x)
    reg.promote("bench", shadow, "shadow")


def gateway_source(work: Path, ref: str | None) -> tuple[Path, str]:
    """The tree the gateway runs from, and how the results name it."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=configs.REPO, capture_output=True, text=True, check=True).stdout
    if ref is None:
        dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "gateway", "registry",
                                                 "inferloop").strip() else ""
        return configs.REPO, f"working tree at {git('rev-parse', '--short', 'HEAD').strip()}{dirty}"
    commit = git("rev-parse", "--short", f"{ref}^{{commit}}").strip()
    src = work / "gateway-src"
    src.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=configs.REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    return src, f"commit {commit}"


def _close(answer: object, expected: float) -> bool:
    if isinstance(answer, bool):
        return False
    if isinstance(answer, (int, float)):
        return abs(answer - expected) <= 1e-4 * max(1.0, abs(expected))
    if isinstance(answer, dict):
        return any(_close(v, expected) for v in answer.values())
    if isinstance(answer, list):
        return any(_close(v, expected) for v in answer)
    return False


@dataclass
class Target:
    """A server that answered the benchmark request correctly, and its wrk script."""

    server: procs.Server
    launch: configs.Launch
    lua: Path

    def load(self, seconds: int, args: argparse.Namespace) -> wrk.Sample:
        return wrk.run(self.launch.url, self.lua, duration=seconds, connections=args.connections, cpu=LOADGEN_CPU)

    def close(self) -> None:
        procs.stop(self.server)
        for path in self.launch.cleanup:
            shutil.rmtree(path, ignore_errors=True)


def start(cfg: Config, ctx: Context, expected: float) -> Target:
    work = Path(tempfile.mkdtemp(prefix=f"{cfg.peer}-", dir=ctx.work))
    launch = cfg.build(ctx, work, configs.free_port())
    server = procs.start(launch.cmd, env=launch.env, cwd=launch.cwd, log=work / "server.log", cpu=SERVER_CPU)
    target = Target(server, launch, work / "post.lua")
    try:
        t0 = time.monotonic()
        answer = procs.wait_ready(server, launch.url, launch.body, launch.headers, launch.ready_timeout)
        if not _close(answer, expected):
            raise RuntimeError(f"wrong answer {json.dumps(answer)[:200]} (expected {expected:.6f})")
        print(f"  ready in {time.monotonic() - t0:.1f} s", flush=True)
        wrk.script(target.lua, launch.body, launch.headers)
    except BaseException:
        target.close()
        raise
    return target


def _show(who: str, s: wrk.Sample) -> None:
    print(f"  {who:<5} {s.rps:>8,.0f} req/s  p50 {s.p50_ms:7.2f} ms  p99 {s.p99_ms:8.2f} ms  errors {s.errors}",
          flush=True)


def measure(cfg: Config, ctx: Context, expected: float, args: argparse.Namespace,
            ceiling: Target | None) -> tuple[Result, Target | None]:
    """Warm-up, then --runs runs; with a running `ceiling`, each run of this server follows a run of
    the ceiling, so that each ratio compares figures taken under the same background load. Returns
    the result and, when `ceiling` is None (this is the ceiling), the still-running server."""
    result = Result(cfg)
    try:
        target = start(cfg, ctx, expected)
    except (procs.NotReady, RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        result.error = " ".join(str(exc).split())[:600]
        return result, None
    keep = False
    try:
        target.load(max(args.warmup, target.launch.min_warmup), args)
        for _ in range(args.runs):
            if ceiling is not None:
                cpu0 = target.server.cpu_seconds()
                result.reference.append(ceiling.load(args.duration, args))
                result.idle_cpu_s += target.server.cpu_seconds() - cpu0
                _show("bare", result.reference[-1])
            result.samples.append(target.load(args.duration, args))
            _show("this", result.samples[-1])
        result.rss_mib = target.server.rss_mib()
        keep = ceiling is None
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        result.error = " ".join(str(exc).split())[:600]
    finally:
        if not keep:
            target.close()
    return result, (target if keep else None)


def ensure_env(cfg: Config, setup: bool, work: Path) -> str | None:
    """None when the config's environment is usable, else why not."""
    if cfg.own_env or venvs.is_ready(cfg.peer, configs.PACKAGES[cfg.peer]):
        return None
    if not setup:
        return f"no up-to-date venv at {venvs.VENVS / cfg.peer} (run with --setup)"
    print(f"setting up {venvs.VENVS / cfg.peer} ...", flush=True)
    log = work / f"setup-{cfg.peer}.log"
    try:
        venvs.ensure(cfg.peer, configs.PACKAGES[cfg.peer], log)
    except subprocess.CalledProcessError:
        tail = " ".join(log.read_text(errors="replace").splitlines()[-5:])
        return f"install failed: {tail[-500:]}"
    return None


def select(only: str | None) -> list[Config]:
    if not only:
        return list(CONFIGS)
    wanted = {p.strip() for p in only.split(",") if p.strip()}
    unknown = wanted - {c.peer for c in CONFIGS}
    if unknown:
        raise SystemExit(f"unknown peer(s) {sorted(unknown)}; known: {sorted({c.peer for c in CONFIGS})}")
    # the bare ceiling is always measured: every ratio is to it, in the same run
    return [c for c in CONFIGS if c.peer in wanted or c.peer == "bare"]


def write(path: Path, command: str, args: argparse.Namespace, results: list[Result], wall: float,
          gateway_from: str) -> str:
    ceiling = next((r for r in results if r.config.peer == "bare"), None)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    text = f"""# Gateway vs peers: one run of `loadtests/bench_peers.py`

```
{command}
```

{time.strftime("%Y-%m-%d %H:%M %Z")} · {cpu} · wrk pinned to CPU {LOADGEN_CPU}, each server's process tree
to CPU {SERVER_CPU} · {args.connections} connections · warm-up {args.warmup} s (TorchServe at least 15 s)
then {args.runs} × {args.duration} s per configuration · medians · RSS = sum over the server's process
tree after the runs · gateway from the {gateway_from} · whole run {wall / 60:.1f} min.

The bare ceiling stays up for the whole run; each run of a server is preceded by a run of the bare
ceiling ("bare req/s alongside"), and "vs bare" divides each figure by the ceiling's median over those
alternating runs, so that both sides of a ratio saw the same background load (this machine's two cores
are shared with other work). Throughput: higher is better; latency and memory: lower is better.

{table(results, ceiling)}

## Install and configuration notes

{configs.INSTALL_NOTES}
## Per run

{raw_runs(results, args.duration) or "-"}

## Could not run

{failures(results) or "- none"}
"""
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated peers: " + ",".join(dict.fromkeys(c.peer for c in CONFIGS)))
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per configuration (default 3)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up seconds (default 5)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--setup", action="store_true", help="create missing peer venvs first")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"results file (default {RESULTS.name})")
    p.add_argument("--gateway-ref", metavar="REF",
                   help="run the gateway from this commit (git archive) instead of the working tree")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (server logs)")
    args = p.parse_args(argv)
    command = "python -m loadtests.bench_peers " + shlex.join(argv if argv is not None else sys.argv[1:])

    chosen = select(args.only)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    results: list[Result] = []
    ceiling: Target | None = None
    gateway_from = "-"
    try:
        ctx, expected = prepare(work, any(c.peer == "gateway" for c in chosen))
        ctx.gateway_src, gateway_from = gateway_source(work, args.gateway_ref)
        for cfg in chosen:
            print(f"== {cfg.key}", flush=True)
            why = ensure_env(cfg, args.setup, work)
            if why:
                result = Result(cfg, error=why)
            else:
                result, running = measure(cfg, ctx, expected, args, ceiling)
                ceiling = ceiling or running
            if result.error:
                print(f"  did not run: {result.error}", flush=True)
            results.append(result)
    finally:
        if ceiling is not None:
            ceiling.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"scratch directory kept: {work}")
    text = write(args.output, command, args, results, time.monotonic() - started, gateway_from)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
