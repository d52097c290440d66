"""Side by side: the gateway against the serving systems a user would pick instead, in one run,
on the same model (float32 MLP 8→64→64→1, one set of weights) and the same single-row request.

    python -m loadtests.bench_peers --setup                       # creates missing venvs, then measures
    python -m loadtests.bench_peers --only fastapi,ray --duration 5 --runs 1
    python -m loadtests.bench_peers --best --connections 1,8,32,64,256   # concurrency sweep

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

Model: `--hidden 1024,1024,1024,1024` serves a forward-bound MLP 8→1024×4→1 instead of the small
8→64→64→1 (issue 15: where the forward, not HTTP, is the cost): the same seed-0 weights in every
server ($BENCH_HIDDEN tells each peer app the shape; the gateway registers the same module).

    python -m loadtests.bench_peers --best --only torchserve,gateway --hidden 1024,1024,1024,1024 \
        --connections 1,8,32,64 --runs 2 --duration 3 --warmup 1

Concurrency sweep: `--connections 1,8,32,64,256` measures every level for each configuration while
it is up (per level: a warm-up, then the runs, each after a run of the bare ceiling at the same
level) and writes, per level, req/s, p50 and p99, the ratios to the echo ceiling (the bare handler
answering a constant: no model) and to the best peer, and issue 14's goals as met or missed
(default file RESULTS-peers-sweep.md). `--best` keeps each peer's best configurations, the gateway
with its defaults and both ceilings.
"""

from __future__ import annotations

import argparse
import contextlib
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

from . import gateway_source as sources
from .bench_gateway import connection_levels
from .peers import configs, procs, venvs, wrk
from .peers.configs import CONFIGS, Config, Context
from .peers.report import Result, failures, peer_goal, raw_runs, sweep_goals, sweep_table, table

LOADGEN_CPU, SERVER_CPU = "0", "1"
RESULTS = Path(__file__).resolve().parent / "RESULTS-peers.md"
SWEEP_RESULTS = RESULTS.with_name("RESULTS-peers-sweep.md")
SMALL = (64, 64)  # the default model's hidden sizes (8→64→64→1)


def hidden_sizes(text: str) -> tuple[int, ...]:
    """argparse type for --hidden: '1024,1024,1024,1024' -> (1024, 1024, 1024, 1024)."""
    try:
        sizes = tuple(int(h) for h in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(h < 1 for h in sizes):
        raise argparse.ArgumentTypeError(f"expected positive sizes separated by commas, got {text!r}")
    return sizes


def describe(hidden: tuple[int, ...]) -> str:
    """'float32 MLP 8→64→64→1'; repeated widths shortened: 8→1024×4→1."""
    widths = f"{hidden[0]}×{len(hidden)}" if len(hidden) > 2 and len(set(hidden)) == 1 else "→".join(map(str, hidden))
    return f"float32 MLP 8→{widths}→1"


def prepare(work: Path, with_gateway: bool, source: sources.Source | None = None,
            hidden: tuple[int, ...] = SMALL) -> tuple[Context, float]:
    """The weights (MLP 8→hidden…→1, fixed seed, safetensors), the request row, and the expected
    answer; with `with_gateway`, the registry the gateway serves, written by `source`'s code
    (default: this tree's)."""
    import numpy as np
    import torch

    from inferloop.registry.architectures import MLP
    from inferloop.registry.artifact import save_module

    torch.manual_seed(0)
    model = MLP(8, 1, list(hidden)).eval()
    data, _ = save_module(model)
    weights = work / "bench.safetensors"
    weights.write_bytes(data)
    row = [round(float(v), 4) for v in np.random.default_rng(1).normal(size=8)]
    with torch.inference_mode():
        expected = float(model(torch.tensor([row]))[0, 0])
    ctx = Context(work, weights, row, hidden=tuple(hidden))
    if source is not None:
        ctx.gateway_source = source
    if with_gateway:
        ctx.registry = work / "registry"
        if ctx.gateway_source.root == sources.REPO:
            register(ctx.registry, model, hidden)
        elif tuple(hidden) == SMALL:  # another commit's registry format: its own code writes it (same seed, same weights)
            sources.make_registry(ctx.gateway_source, ctx.registry, shadow=True, reference_seed=2)
        else:
            register_shaped(ctx.gateway_source, ctx.registry, hidden)
    return ctx, expected


def register(root: Path, model, hidden: tuple[int, ...] = SMALL) -> None:
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
        shadow = run.register(MLP(8, 1, list(hidden)).eval(), example_inputs=x[:8], reference=x)
    reg.promote("bench", shadow, "shadow")


# another commit's registry, written by its own code, with a model of any hidden sizes
# (sources.make_registry writes the small one): seed 0 in production, seed 1 as the shadow
REGISTER_SHAPED = """
import importlib, json, sys
import torch
reg = importlib.import_module(sys.argv[1])
torch.manual_seed(0)
model = reg.MLP(8, 1, json.loads(sys.argv[3])).eval()
x = torch.randn(512, 8, generator=torch.Generator().manual_seed(2))
with reg.Registry.open(sys.argv[2]) as r:
    with r.track("bench", actor="bench") as run:
        version = run.register(model, example_inputs=x[:8], reference=x)
    r.promote("bench", version, "production", actor="bench")
    torch.manual_seed(1)
    with r.track("bench", actor="bench") as run:
        other = run.register(reg.MLP(8, 1, json.loads(sys.argv[3])).eval(), example_inputs=x[:8], reference=x)
    r.promote("bench", other, "shadow", actor="bench")
"""


def register_shaped(source: sources.Source, root: Path, hidden: tuple[int, ...]) -> None:
    done = subprocess.run([sys.executable, "-c", REGISTER_SHAPED, source.registry_module, f"file://{root}",
                           json.dumps(list(hidden))], cwd=source.cwd, env=source.env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{source.label}: registering the benchmark model failed: {done.stderr.strip()[-800:]}")


def gateway_source(work: Path, ref: str | None, trees: contextlib.ExitStack) -> sources.Source:
    """The tree the gateway runs from: the working tree, or a worktree of `ref` removed with `trees`."""
    if ref is None:
        return sources.working_tree()
    (work / "gateway-src").mkdir()
    source = trees.enter_context(sources.checkout(ref, work / "gateway-src"))
    sources.verify(source)
    return source


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

    def load(self, seconds: float, connections: int) -> wrk.Sample:
        return wrk.run(self.launch.url, self.lua, duration=seconds, connections=connections, cpu=LOADGEN_CPU)

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
        if cfg.check and not _close(answer, expected):
            raise RuntimeError(f"wrong answer {json.dumps(answer)[:200]} (expected {expected:.6f})")
        print(f"  ready in {time.monotonic() - t0:.1f} s", flush=True)
        wrk.script(target.lua, launch.body, launch.headers)
    except BaseException:
        target.close()
        raise
    return target


def _show(who: str, s: wrk.Sample, connections: int) -> None:
    print(f"  c{connections:<4d} {who:<5} {s.rps:>8,.0f} req/s  p50 {s.p50_ms:7.2f} ms  p99 {s.p99_ms:8.2f} ms  errors {s.errors}",
          flush=True)


def measure(cfg: Config, ctx: Context, expected: float, args: argparse.Namespace,
            ceiling: Target | None) -> tuple[list[Result], Target | None]:
    """Per connection level (args.connections, in order): a warm-up, then --runs runs; with a running
    `ceiling`, each run of this server follows a run of the ceiling at the same level, so that each
    ratio compares figures taken under the same background load. Returns one result per level and,
    when `ceiling` is None (this is the ceiling), the still-running server."""
    results = [Result(cfg, connections=level) for level in args.connections]
    try:
        target = start(cfg, ctx, expected)
    except (procs.NotReady, RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        for result in results:
            result.error = " ".join(str(exc).split())[:600]
        return results, None
    keep = False
    result = results[0]
    try:
        for i, result in enumerate(results):
            level = result.connections
            target.load(args.warmup if i else max(args.warmup, target.launch.min_warmup), level)
            for _ in range(args.runs):
                if ceiling is not None:
                    cpu0 = target.server.cpu_seconds()
                    result.reference.append(ceiling.load(args.duration, level))
                    result.idle_cpu_s += target.server.cpu_seconds() - cpu0
                    _show("bare", result.reference[-1], level)
                result.samples.append(target.load(args.duration, level))
                _show("this", result.samples[-1], level)
            result.rss_mib = target.server.rss_mib()
        keep = ceiling is None
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        why = " ".join(str(exc).split())[:600]
        failed_at = results.index(result)
        for later in results[failed_at:]:
            later.error = why if later is result else f"not measured: failed at {result.connections} connections"
    finally:
        if not keep:
            target.close()
    return results, (target if keep else None)


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


def select(only: str | None, best: bool = False) -> list[Config]:
    chosen = [c for c in CONFIGS if c.best or not best]
    if not only:
        return chosen
    wanted = {p.strip() for p in only.split(",") if p.strip()}
    unknown = wanted - {c.peer for c in CONFIGS}
    if unknown:
        raise SystemExit(f"unknown peer(s) {sorted(unknown)}; known: {sorted({c.peer for c in CONFIGS})}")
    # the bare ceiling is always measured: every ratio is to it, in the same run
    return [c for c in chosen if c.peer in wanted or c.peer == "bare"]


def _cpu_name() -> str:
    return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), platform.processor())


def write(path: Path, command: str, args: argparse.Namespace, results: list[Result], wall: float,
          gateway_from: str) -> str:
    ceiling = next((r for r in results if r.config.peer == "bare"), None)
    cpu = _cpu_name()
    connections = args.connections[0]
    text = f"""# Gateway vs peers: one run of `loadtests/bench_peers.py`

```
{command}
```

{time.strftime("%Y-%m-%d %H:%M %Z")} · {cpu} · {describe(args.hidden)} · wrk pinned to CPU {LOADGEN_CPU}, each server's process tree
to CPU {SERVER_CPU} · {connections} connections · warm-up {args.warmup} s (TorchServe at least 15 s)
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


def write_sweep(path: Path, command: str, args: argparse.Namespace, results: list[Result], wall: float,
                gateway_from: str) -> str:
    levels = ", ".join(map(str, args.connections))
    forward_bound = ("" if tuple(args.hidden) == SMALL else
                     f"\n## Goal (issue 15): ≥ 1.5 × TorchServe's throughput at a lower p99\n\n{peer_goal(results)}\n")
    text = f"""# Gateway vs peers, concurrency sweep: one run of `loadtests/bench_peers.py`

```
{command}
```

{time.strftime("%Y-%m-%d %H:%M %Z")} · {_cpu_name()} · {describe(args.hidden)} · wrk (one thread) pinned to CPU {LOADGEN_CPU}, each
server's process tree to CPU {SERVER_CPU} · connections {levels} · per configuration and level a warm-up
of {args.warmup} s (TorchServe at least 15 s before its first level), then {args.runs} × {args.duration} s · medians ·
gateway from the {gateway_from} · whole run {wall / 60:.1f} min.

Configurations run one after another; the bare ceiling (the handler with the forward inline) stays up
for the whole run, and each run of a server is preceded by a run of the bare ceiling at the same
level. "vs bare" divides req/s by that ceiling's median over the runs taken alongside; "× echo" and
"× best peer" are ratios of those "vs bare" figures (each side against the ceiling measured beside
it), so that background load on this shared 2-core machine cancels as far as it can. "p50 vs bare"
is the p50 over the bare ceiling's p50 alongside (the inline forward's latency).

{sweep_table(results)}

## Goals (issue 14), as measured in this run

{sweep_goals(results)}
{forward_bound}
## Install and configuration notes

{configs.INSTALL_NOTES}
## Per run

{raw_runs(results, args.duration, levels=True) or "-"}

## Could not run

{failures(results, levels=True) or "- none"}
"""
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated peers: " + ",".join(dict.fromkeys(c.peer for c in CONFIGS)))
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per configuration (default 3)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up seconds (default 5)")
    p.add_argument("--connections", type=connection_levels, default=[64], metavar="N[,N...]",
                   help="wrk connections (default 64); several, e.g. 1,8,32,64,256, sweep them in one run")
    p.add_argument("--hidden", type=hidden_sizes, default=SMALL, metavar="N[,N...]",
                   help="the MLP's hidden sizes, the same model in every server (default 64,64; "
                        "1024,1024,1024,1024: forward-bound)")
    p.add_argument("--best", action="store_true",
                   help="only each peer's best configurations, the gateway's defaults and the two ceilings")
    p.add_argument("--setup", action="store_true", help="create missing peer venvs first")
    p.add_argument("--output", type=Path, help=f"results file (default {RESULTS.name}, "
                                               f"{SWEEP_RESULTS.name} for several connection counts)")
    p.add_argument("--gateway-ref", metavar="REF",
                   help="run the gateway from this commit (a git worktree) instead of the working tree")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (server logs)")
    args = p.parse_args(argv)
    command = "python -m loadtests.bench_peers " + shlex.join(argv if argv is not None else sys.argv[1:])

    chosen = select(args.only, args.best)
    sweep = len(args.connections) > 1
    output = args.output or (SWEEP_RESULTS if sweep else RESULTS)
    if args.gateway_ref is not None:
        try:
            sources.resolve(args.gateway_ref)
        except ValueError as exc:
            print(f"bench_peers: {exc}", file=sys.stderr)
            return 2
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    results: list[Result] = []
    ceiling: Target | None = None
    gateway_from = "-"
    try:
        with contextlib.ExitStack() as trees:
            source = gateway_source(work, args.gateway_ref, trees)
            gateway_from = source.label
            ctx, expected = prepare(work, any(c.peer == "gateway" for c in chosen), source, args.hidden)
            for cfg in chosen:
                print(f"== {cfg.key}", flush=True)
                why = ensure_env(cfg, args.setup, work)
                if why:
                    measured = [Result(cfg, connections=level, error=why) for level in args.connections]
                else:
                    measured, running = measure(cfg, ctx, expected, args, ceiling)
                    ceiling = ceiling or running
                for result in measured:
                    if result.error:
                        print(f"  did not run at {result.connections} connections: {result.error}", flush=True)
                results += measured
            if ceiling is not None:
                ceiling.close()
                ceiling = None
    finally:
        if ceiling is not None:
            ceiling.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"scratch directory kept: {work}")
    writer = write_sweep if sweep else write
    text = writer(output, command, args, results, time.monotonic() - started, gateway_from)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
