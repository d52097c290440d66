"""What change detection costs the registry, with and without the change record (issue 18).

    python -m loadtests.bench_registry_polling [--models 1000 --replicas 20 --interval 0.5]

Simulates gateway replicas in one process against the real registry (a `file://` directory, and S3
on a `moto` server it starts on 127.0.0.1). Each replica is its own `AsyncRegistry` (every store
request counted through `count_requests`), one real `StagePoller` per model (production stage only)
sharing one `max_concurrent_polls` semaphore as in `gateway.assembly`, and, in `record` mode, one
real `ChangeFeed`. The poller's model-loading stage is a stand-in that only records when each
version was applied: this measures registry traffic and propagation, not model loading.

Per backend and mode (`record`: follow the change record; `pointers`: `change_record=False`, every
pointer polled every interval) it measures
  1. idle store requests/s, per replica and in total, over a window with no promotions, after every
     poller has applied v1;
  2. propagation: K models promoted to v2 one after another; for every (promotion, replica) the time
     from `promote` returning until that replica's stand-in stage applied v2 (p50/p99).
Python cannot poll 40,000 pointers/s in one process, so `pointers` mode runs at the smaller scale
given by --pointers-scale (and S3's `record` mode at --record-scale: moto answers a few hundred
requests/s, and every replica reads every pointer at start); the script prints demanded vs achieved
request rates and the linear extrapolation (replicas × models × stages / interval) labelled as such.
About 6 minutes with the defaults; --backends, --modes, --models, --idle-seconds, --promotions shrink it.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from inferloop.gateway.serving.stage import ApplyOutcome, ModelStage
    from inferloop.registry import AsyncRegistry, StagePointer

STAGE = "production"
GET_PRICE_PER_1000 = 0.0004  # USD, S3 Standard GET (published price)
MONTH_S = 30 * 24 * 3600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model(i: int) -> str:
    return f"m{i:05d}"


class StandInStage:
    """Takes the place of `ModelStage`: applying a version only records when it happened."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stage = STAGE
        self.serving_version: int | None = None
        self.applied_at: dict[int, float] = {}

    async def apply(self, pointer: StagePointer | None, trigger: str) -> ApplyOutcome:
        from inferloop.gateway.serving.stage import ApplyOutcome

        version = pointer.version if pointer is not None else None
        self.serving_version = version
        if version is not None:
            self.applied_at.setdefault(version, time.monotonic())
        return ApplyOutcome(version, True)


@dataclass
class Replica:
    registry: AsyncRegistry
    stages: dict[str, StandInStage]
    counts: Counter[str] = field(default_factory=Counter)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    feed: Any = None
    pollers: list[Any] = field(default_factory=list)


# -- setup ---------------------------------------------------------------------------------------
def _artifacts() -> tuple[list[bytes], Callable[..., Any], Any, Any]:
    from inferloop.registry.architectures import MLP
    from inferloop.registry.artifact import FORMAT, save_module
    from inferloop.registry.lineage import capture_code, capture_environment
    from inferloop.registry.manifest import ArtifactInfo, FeatureSpec, InputSignature, Lineage

    data, spec = save_module(MLP(4, 1, []))  # one Linear(4, 1)
    # two blobs in all (v1 and v2 of every model): the registry stores each once
    blobs = [data, data[:-4] + b"\x00\x00\x80\x3f"]
    lineage = Lineage(code=capture_code(), environment=capture_environment())
    signature = InputSignature(features=[FeatureSpec(f"x{i}") for i in range(4)])
    return blobs, (lambda d, n: ArtifactInfo(d, n, FORMAT, spec)), lineage, signature


def _promoted(models_n: int, k: int) -> list[str]:
    """The models a run promotes: spread over the served ones."""
    k = min(k, models_n)
    return [_model((i * models_n) // k) for i in range(k)]


async def setup(uri: str, models: int, with_v2: set[str], concurrency: int) -> dict[str, float]:
    """`models` models at v1 in production; v2 registered for `with_v2` (the only ones ever promoted to
    it: registering it everywhere would double the set-up time and change nothing measured)."""
    from inferloop.registry import AsyncRegistry

    blobs, info, lineage, signature = _artifacts()
    out: dict[str, float] = {}
    async with AsyncRegistry.open(uri) as core:
        await core.check()
        limit = asyncio.Semaphore(concurrency)

        async def register(i: int) -> None:
            async with limit:
                for blob in blobs if _model(i) in with_v2 else blobs[:1]:
                    await core.register(_model(i), blob, info, lineage, signature, actor="bench")

        t = time.perf_counter()
        await asyncio.gather(*(register(i) for i in range(models)))
        out["register"] = time.perf_counter() - t
        # promotions contend on the one change record (compare-and-swap, retried): fewer at once
        promote_limit = asyncio.Semaphore(max(1, concurrency // 4))

        async def promote(i: int) -> None:
            async with promote_limit:
                await core.promote(_model(i), 1, STAGE, actor="bench")

        t = time.perf_counter()
        await asyncio.gather(*(promote(i) for i in range(models)))
        out["promote"] = time.perf_counter() - t
        out["record_bytes"] = float(len((await core.store.get("changes.json")).data))
    return out


# -- replicas ------------------------------------------------------------------------------------
async def start_replicas(uri: str, n: int, models: list[str], settings: Any, record: bool) -> list[Replica]:
    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.change_feed import ChangeFeed
    from inferloop.gateway.serving.poller import StagePoller
    from inferloop.registry import AsyncRegistry

    metrics = GatewayMetrics()  # shared: only poll errors are counted there
    replicas = []
    for _ in range(n):
        counts: Counter[str] = Counter()

        def count(op: str, counts: Counter[str] = counts) -> None:
            counts[op] += 1

        registry = AsyncRegistry.open(uri, count_requests=count)
        stages = {m: StandInStage(m) for m in models}
        limit = asyncio.Semaphore(settings.max_concurrent_polls)  # one per gateway, as in assembly
        pollers = [StagePoller(registry, cast("ModelStage", s), settings, metrics, limit=limit) for s in stages.values()]
        replica = Replica(registry, stages, counts, pollers=pollers)
        if record:
            replica.feed = ChangeFeed(registry, pollers, settings)
        replicas.append(replica)
    for replica in replicas:
        replica.tasks = [asyncio.create_task(p.run()) for p in replica.pollers]
        if replica.feed is not None:
            replica.tasks.append(asyncio.create_task(replica.feed.run()))
    return replicas


async def stop_replicas(replicas: list[Replica]) -> int:
    """Cancel every task; the number still running 10 s later (20,000 take over 1 s to unwind). On Python 3.11 `asyncio.wait_for`
    swallows a cancellation that arrives while the awaited event has just fired (a poke): such a
    poller sleeps on (up to full_scan_interval_s with the record), so it is cancelled again."""
    tasks = [t for r in replicas for t in r.tasks]
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
    stuck = len(pending)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1)
    for replica in replicas:
        await replica.registry.close()
    return stuck


async def wait_applied(replicas: list[Replica], expected: dict[str, int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r.stages[m].serving_version == v for r in replicas for m, v in expected.items() if m in r.stages):
            return True
        await asyncio.sleep(0.05)
    return False


class LoopLag:
    """How late a 50 ms sleep wakes up: whether the one process keeps up with what it simulates."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            self.samples.append(time.monotonic() - t - 0.05)

    def stop(self) -> list[float]:
        self.task.cancel()
        return self.samples


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def run_mode(uri: str, backend: str, mode: str, replicas_n: int, models_n: int, args: argparse.Namespace,
                   promoter: AsyncRegistry) -> dict[str, Any]:
    from inferloop.gateway.settings import RegistrySettings

    record = mode == "record"
    settings = RegistrySettings(uri=uri, poll_interval_s=args.interval, change_record=record,
                                full_scan_interval_s=args.full_scan_interval)
    models = [_model(i) for i in range(models_n)]
    promoted = _promoted(models_n, args.promotions)
    k = len(promoted)
    t = time.monotonic()
    replicas = await start_replicas(uri, replicas_n, models, settings, record)
    try:
        if not await wait_applied(replicas, dict.fromkeys(models, 1), args.warmup_timeout):
            raise RuntimeError(f"{backend}/{mode}: replicas did not all apply v1 within {args.warmup_timeout}s")
        warmup = time.monotonic() - t
        # In record mode every poller reads its pointer twice at start: its own first round, then the
        # feed's first-sight full scan pokes it while that round waits on the semaphore. Measure once
        # that drain is over: the 1-s request rate is within 1.5x the feed's (or after --settle-max).
        await asyncio.sleep(args.settle)
        steady = replicas_n / args.interval
        quiet = not record
        while record and time.monotonic() - t < warmup + args.settle_max:
            n0 = sum(sum(r.counts.values()) for r in replicas)
            await asyncio.sleep(1.0)
            if sum(sum(r.counts.values()) for r in replicas) - n0 <= 1.5 * steady:
                quiet = True
                break
        settle = time.monotonic() - t - warmup
        startup_reads = sum(p.polls for r in replicas for p in r.pollers) / (replicas_n * models_n)
        lag = LoopLag()
        before = [r.counts.copy() for r in replicas]
        polls0 = sum(p.polls for r in replicas for p in r.pollers)
        t0 = time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        window = time.monotonic() - t0
        after = [r.counts.copy() for r in replicas]
        polls = sum(p.polls for r in replicas for p in r.pollers) - polls0
        lags = lag.stop()
        deltas = [a - b for a, b in zip(after, before, strict=True)]
        total_ops: Counter[str] = Counter()
        for d in deltas:
            total_ops.update(d)
        per_replica = [sum(d.values()) / window for d in deltas]
        # propagation
        promote_returned: dict[str, float] = {}
        promote_s: list[float] = []
        for i, name in enumerate(promoted):
            if i:
                await asyncio.sleep(args.spacing)
            t1 = time.monotonic()
            await promoter.promote(name, 2, STAGE, actor="bench")
            promote_returned[name] = time.monotonic()
            promote_s.append(promote_returned[name] - t1)
        done = await wait_applied(replicas, dict.fromkeys(promoted, 2), args.propagation_timeout)
        delays = [r.stages[m].applied_at[2] - promote_returned[m] for r in replicas for m in promoted
                  if 2 in r.stages[m].applied_at]
        missing = replicas_n * k - len(delays)
        feed_pokes = sum(r.feed.pokes for r in replicas) if record else 0
    finally:
        stuck = await stop_replicas(replicas)
        if stuck:
            print(f"[{backend}/{mode}] {stuck} poller task(s) ignored their first cancellation", file=sys.stderr)
    # back to v1 for the next mode (outside every measurement)
    for name in promoted:
        await promoter.promote(name, 1, STAGE, actor="bench")
    total = sum(total_ops.values()) / window
    demanded = replicas_n / args.interval if record else replicas_n * models_n / args.interval
    return {
        "backend": backend, "mode": mode, "replicas": replicas_n, "models": models_n, "warmup_s": warmup,
        "window_s": window, "total_rps": total, "per_replica_rps": statistics.mean(per_replica),
        "ops": {op: n / window for op, n in total_ops.items()}, "demanded_rps": demanded, "poller_rounds": polls,
        "lag_p99_ms": _pct(lags, 0.99) * 1e3, "lag_max_ms": max(lags, default=0.0) * 1e3,
        "delays": delays, "missing": missing, "propagated_all": done, "promote_p50_ms": _pct(promote_s, 0.5) * 1e3,
        "promotions": k, "feed_pokes": feed_pokes, "settle_s": settle, "quiet": quiet,
        "startup_reads": startup_reads, "stuck": stuck,
    }


async def run_backend(uri: str, backend: str, args: argparse.Namespace, scale: dict[str, tuple[int, int]]
                      ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from inferloop.registry import AsyncRegistry

    scales = [(r, min(m, args.models)) for r, m in (scale.get(mode, (args.replicas, args.models)) for mode in args.modes)]
    with_v2 = {m for _, models_n in scales for m in _promoted(models_n, args.promotions)}
    setup_s = await setup(uri, args.models, with_v2, args.setup_concurrency)
    setup_s["v2"] = len(with_v2)
    print(f"[{backend}] setup: {args.models} models (+{len(with_v2)} v2) registered in {setup_s['register']:.1f}s, "
          f"production -> v1 in {setup_s['promote']:.1f}s; change record {setup_s['record_bytes'] / 1024:.0f} KiB",
          file=sys.stderr, flush=True)
    results = []
    async with AsyncRegistry.open(uri) as promoter:
        for mode, (replicas_n, models_n) in zip(args.modes, scales, strict=True):
            res = await run_mode(uri, backend, mode, replicas_n, models_n, args, promoter)
            print(f"[{backend}/{mode}] {replicas_n} replicas x {models_n} models: idle {res['total_rps']:.1f} req/s "
                  f"({res['ops']}), demanded {res['demanded_rps']:.0f}; propagation p50 "
                  f"{_pct(res['delays'], 0.5):.3f}s p99 {_pct(res['delays'], 0.99):.3f}s, missing {res['missing']}; "
                  f"loop lag p99 {res['lag_p99_ms']:.0f} ms", file=sys.stderr, flush=True)
            results.append(res)
    return setup_s, results


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    import boto3

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench-polling")
            return proc, endpoint
        except Exception:  # noqa: BLE001 - server still starting
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("moto server did not start")


def _parse_scale(items: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for item in items:
        backend, _, rxm = item.partition("=")
        r, _, m = rxm.partition("x")
        out[backend] = (int(r), int(m))
    return out


def _report(args: argparse.Namespace, setups: dict[str, dict[str, float]], results: list[dict[str, Any]]) -> None:
    iv, fs = args.interval, args.full_scan_interval
    print(f"\n{args.models} models, production stage only (one pointer per model), poll interval {iv} s "
          f"(jitter ±20 %), full-scan safety net {fs:g} s, idle window {args.idle_seconds:g} s, "
          f"{args.promotions} promotions {args.spacing:g} s apart.")
    for backend, s in setups.items():
        print(f"Setup ({backend}): {args.models} models at v1 (+ v2 for the {s['v2']:.0f} promoted) registered in {s['register']:.1f} s, "
              f"production → v1 in {s['promote']:.1f} s; change record {s['record_bytes'] / 1024:.0f} KiB.")
    print()
    print("| backend | mode | replicas × models | idle req/s demanded | idle req/s measured (total) | per replica "
          "| propagation p50 / p99 (s) | (promotion, replica) pairs | loop lag p99 |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|")
    for r in results:
        d = r["delays"]
        note = "" if r["missing"] == 0 else f", {r['missing']} never applied"
        print(f"| {r['backend']} | {r['mode']} | {r['replicas']} × {r['models']} | {r['demanded_rps']:,.0f} "
              f"| {r['total_rps']:,.1f} | {r['per_replica_rps']:,.2f} | {_pct(d, 0.5):.3f} / {_pct(d, 0.99):.3f} "
              f"| {len(d)}{note} | {r['lag_p99_ms']:.0f} ms |")
    print("\nIdle requests by operation (total req/s over the window):")
    for r in results:
        ops = ", ".join(f"{op} {v:,.1f}" for op, v in sorted(r["ops"].items()))
        print(f"- {r['backend']}/{r['mode']} ({r['replicas']} × {r['models']}): {ops or 'none'}; "
              f"warm-up {r['warmup_s']:.1f} s + settle {r['settle_s']:.1f} s"
              f"{'' if r['quiet'] else ' (never quiet)'}, pointer reads per poller by then {r['startup_reads']:.2f}; "
              f"tasks that ignored a cancel {r['stuck']}; min delay {min(r['delays'], default=float('nan')):.3f} s, max {max(r['delays'], default=float('nan')):.3f} s")
    # the extrapolation, labelled as such
    print(f"\nExtrapolated, not measured: pointer polling = replicas × models × stages / interval; with the record = "
          f"replicas × (1 / interval + models × stages / full_scan_interval) (the safety net's rate is not in a "
          f"{args.idle_seconds:g} s window shorter than {fs:g} s).")
    print("\n| replicas × models (1 stage) | pointers: req/s | record: req/s | pointers: USD/month | record: USD/month |")
    print("|---|---:|---:|---:|---:|")
    for reps, mods in ((args.replicas, args.models), (100, 1000)):
        ptr = reps * mods / iv
        rec = reps * (1 / iv + mods / fs)
        cost = [x * MONTH_S / 1000 * GET_PRICE_PER_1000 for x in (ptr, rec)]
        print(f"| {reps} × {mods:,} | {ptr:,.0f} | {rec:,.1f} | {cost[0]:,.0f} | {cost[1]:,.0f} |")
    print(f"(S3 GET USD {GET_PRICE_PER_1000} per 1,000 requests, 30-day month; a 304 is billed as a GET.)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.5, help="poll_interval_s")
    ap.add_argument("--full-scan-interval", type=float, default=300.0)
    ap.add_argument("--backends", nargs="+", default=["file", "s3"], choices=["file", "s3"])
    ap.add_argument("--modes", nargs="+", default=["record", "pointers"], choices=["record", "pointers"])
    ap.add_argument("--pointers-scale", nargs="*", default=["file=2x500", "s3=2x50"], metavar="BACKEND=RxM",
                    help="replicas x models for `pointers` mode per backend (one process cannot poll 40,000/s)")
    ap.add_argument("--record-scale", nargs="*", default=["s3=4x1000"], metavar="BACKEND=RxM",
                    help="replicas x models for `record` mode where not --replicas x --models (moto serves a few "
                         "hundred requests/s: 20 replicas' start-up reads of 1,000 pointers take minutes)")
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after every replica applied v1")
    ap.add_argument("--settle-max", type=float, default=90.0,
                    help="record mode: longest wait for the start-up reads to drain")
    ap.add_argument("--promotions", type=int, default=20)
    ap.add_argument("--spacing", type=float, default=0.75, help="seconds between promotions")
    ap.add_argument("--setup-concurrency", type=int, default=32)
    ap.add_argument("--warmup-timeout", type=float, default=180.0)
    ap.add_argument("--propagation-timeout", type=float, default=30.0)
    args = ap.parse_args()
    for var, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(var, value)
    os.environ.pop("AWS_PROFILE", None)
    pointers_scale, record_scale = _parse_scale(args.pointers_scale), _parse_scale(args.record_scale)
    started = time.monotonic()
    setups: dict[str, dict[str, float]] = {}
    results: list[dict[str, Any]] = []
    moto: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for backend in args.backends:
                if backend == "s3":
                    moto, endpoint = _start_moto()
                    os.environ["AWS_ENDPOINT_URL"] = endpoint
                    uri = "s3://bench-polling/reg"
                else:
                    uri = f"file://{tmp}/reg"
                scale = {mode: given[backend] for mode, given in (("record", record_scale), ("pointers", pointers_scale))
                         if backend in given}
                setups[backend], res = asyncio.run(run_backend(uri, backend, args, scale))
                results += res
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
    _report(args, setups, results)
    print(f"\n(total run {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
