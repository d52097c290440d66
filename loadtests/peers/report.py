"""Results of one driver run: medians per configuration (and connection level), ratios to the bare
ceiling, the tables, and for a concurrency sweep issue 14's goals."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .configs import Config
from .wrk import Sample


@dataclass
class Result:
    config: Config
    connections: int = 64
    samples: list[Sample] = field(default_factory=list)
    # the bare ceiling's runs taken alternately with this server's (empty for the ceiling itself)
    reference: list[Sample] = field(default_factory=list)
    idle_cpu_s: float = 0.0  # CPU this server's tree used while the ceiling was measured
    rss_mib: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)


def median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples) if samples else 0.0


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(results: list[Result], ceiling: Result | None) -> str:
    head = ("| server | configuration | req/s | bare req/s alongside | vs bare | p50 ms | vs bare | p99 ms | vs bare "
            "| RSS MiB | vs bare | failed requests |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base_rss = ceiling.rss_mib if ceiling is not None and ceiling.ok else 0.0
    for r in results:
        c = r.config
        if not r.ok:
            lines.append(f"| {c.server} | {c.variant} | did not run: see below |" + " |" * 9)
            continue
        ref = r.samples if r is ceiling else r.reference
        rps, p50, p99 = median(r.samples, "rps"), median(r.samples, "p50_ms"), median(r.samples, "p99_ms")
        b_rps, b50, b99 = median(ref, "rps"), median(ref, "p50_ms"), median(ref, "p99_ms")
        if p99 > 0:
            latency = f"{p50:.2f} | {_ratio(p50, b50)} | {p99:.2f} | {_ratio(p99, b99)}"
        else:  # no request completed within wrk's timeout
            latency = "- | - | - | -"
        lines.append(f"| {c.server} | {c.variant} | {rps:,.0f} | {b_rps:,.0f} | {_ratio(rps, b_rps)} | {latency} | "
                     f"{r.rss_mib:,.0f} | {_ratio(r.rss_mib, base_rss)} | {r.errors} |")
    return "\n".join(lines)


def _runs(samples: list[Sample]) -> str:
    return "; ".join(f"{s.rps:,.0f} req/s p50 {s.p50_ms:.2f} p99 {s.p99_ms:.2f}"
                     + (f" (errors: {s.detail})" if s.errors else "") for s in samples)


def _name(r: Result, levels: bool) -> str:
    return f"{r.config.key} at {r.connections} connections" if levels else r.config.key


def raw_runs(results: list[Result], duration: int, levels: bool = False) -> str:
    lines = []
    for r in results:
        if not r.ok:
            continue
        lines.append(f"- {_name(r, levels)}: {_runs(r.samples)}")
        if r.reference:
            idle = 100 * r.idle_cpu_s / (duration * len(r.reference))
            lines.append(f"  - bare alongside: {_runs(r.reference)} (this server idle meanwhile: "
                         f"{idle:.1f} % of a core)")
    return "\n".join(lines)


def failures(results: list[Result], levels: bool = False) -> str:
    if not levels:
        return "\n".join(f"- {r.config.key}: {r.error}" for r in results if not r.ok)
    seen: dict[tuple[str, str | None], list[int]] = {}  # one line per configuration and reason
    for r in results:
        if not r.ok:
            seen.setdefault((r.config.key, r.error), []).append(r.connections)
    return "\n".join(f"- {key} ({', '.join(map(str, conns))} connections): {error}"
                     for (key, error), conns in seen.items())


# ---- concurrency sweep ---------------------------------------------------------------------------

def vs_bare(r: Result) -> float:
    """req/s over the bare ceiling's req/s taken alongside (the ceiling itself: 1)."""
    ref = r.reference or r.samples
    base = median(ref, "rps")
    return median(r.samples, "rps") / base if base else 0.0


def p50_vs_bare(r: Result) -> float:
    base = median(r.reference or r.samples, "p50_ms")
    return median(r.samples, "p50_ms") / base if base else 0.0


def _level(results: list[Result], level: int) -> list[Result]:
    return [r for r in results if r.connections == level]


def _find(results: list[Result], peer: str, variant: str | None = None) -> Result | None:
    return next((r for r in results if r.config.peer == peer and (variant is None or r.config.variant == variant)
                 and r.ok), None)


def failing(r: Result) -> bool:
    """More than 1 % of its requests failed: its req/s counts fast refusals (TorchServe's 503 when its
    queue is full), so it is no peer to beat at that level."""
    return r.errors > 0.01 * max(1, sum(s.requests for s in r.samples))


def _peers(results: list[Result]) -> list[Result]:
    return [r for r in results if not r.config.own_env and r.ok and not failing(r)]


def sweep_table(results: list[Result]) -> str:
    head = ("| connections | server | configuration | req/s | vs bare | × echo | p50 ms | p50 vs bare | p99 ms "
            "| failed requests |")
    lines = [head, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for level in dict.fromkeys(r.connections for r in results):
        at = _level(results, level)
        echo = _find(at, "echo")
        for r in at:
            c = r.config
            if not r.ok:
                lines.append(f"| {level} | {c.server} | {c.variant} | did not run |" + " |" * 6)
                continue
            x_echo = f"{vs_bare(r) / vs_bare(echo):.2f}" if echo is not None and vs_bare(echo) else "-"
            lines.append(f"| {level} | {c.server} | {c.variant} | {median(r.samples, 'rps'):,.0f} | "
                         f"{vs_bare(r):.2f} | {x_echo} | {median(r.samples, 'p50_ms'):.2f} | {p50_vs_bare(r):.2f} | "
                         f"{median(r.samples, 'p99_ms'):.2f} | {r.errors} |")
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def sweep_goals(results: list[Result]) -> str:
    """The gateway with its defaults (batching on) against issue 14's goals at each level measured."""
    lines = []
    for level in dict.fromkeys(r.connections for r in results):
        at = _level(results, level)
        gw, echo = _find(at, "gateway", "batching on"), _find(at, "echo")
        if gw is None:
            lines.append(f"- {level} connections: the gateway did not run")
            continue
        peers = _peers(at)
        best = max(peers, key=vs_bare, default=None)
        parts = []
        x_echo = vs_bare(gw) / vs_bare(echo) if echo is not None and vs_bare(echo) else None
        if level == 1:
            parts.append(f"p50 ≤ 1.3 × the bare inline forward's: {median(gw.samples, 'p50_ms'):.2f} ms, "
                         f"{p50_vs_bare(gw):.2f} × ({_verdict(p50_vs_bare(gw) <= 1.3)})")
        if x_echo is not None:
            goal = {1: 0.7, 8: 1.0, 32: 1.0}.get(level)
            parts.append(f"req/s {x_echo:.2f} × the echo ceiling"
                         + (f" (goal ≥ {goal:g}: {_verdict(x_echo >= goal)})" if goal else ""))
        if best is not None and vs_bare(best):
            x_best = vs_bare(gw) / vs_bare(best)
            raw = median(gw.samples, "rps") / median(best.samples, "rps")
            parts.append(f"{x_best:.2f} × the best peer ({best.config.key}: {median(best.samples, 'rps'):,.0f} req/s "
                         f"against {median(gw.samples, 'rps'):,.0f}, raw {raw:.2f} ×)"
                         + (f" (goal ≥ 2: {_verdict(x_best >= 2)})" if level in (8, 32) else ""))
        with_p99 = [r for r in peers if median(r.samples, "p99_ms") > 0]
        if with_p99:
            low = min(with_p99, key=lambda r: median(r.samples, "p99_ms"))
            p99 = median(gw.samples, "p99_ms")
            parts.append(f"p99 {p99:.2f} ms against the lowest peer p99 {median(low.samples, 'p99_ms'):.2f} ms "
                         f"({low.config.key})" + (f" (goal below every peer's: {_verdict(p99 < median(low.samples, 'p99_ms'))})"
                                                  if level in (64, 256) else ""))
        if level in (64, 256):
            parts.append(f"{vs_bare(gw):.2f} × the bare ceiling alongside (compare with earlier runs' figure)")
        dropped = [r for r in at if not r.config.own_env and r.ok and failing(r)]
        if dropped:
            parts.append("not counted as peers here (over 1 % of requests failed): "
                         + ", ".join(f"{r.config.key} ({r.errors:,} of {sum(s.requests for s in r.samples):,})"
                                     for r in dropped))
        lines.append(f"- {level} connection{'s' if level > 1 else ''}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def peer_goal(results: list[Result], peer: str = "torchserve", factor: float = 1.5) -> str:
    """Issue 15's goal per level: the gateway (batching on) at ≥ `factor` × `peer`'s best configuration's
    throughput (as ratios of "vs bare", each against the ceiling measured beside it; raw req/s beside)
    and at a lower p99."""
    lines = []
    for level in dict.fromkeys(r.connections for r in results):
        at = _level(results, level)
        gw = _find(at, "gateway", "batching on")
        them = [r for r in at if r.config.peer == peer and r.config.best and r.ok and not failing(r)]
        other = max(them, key=vs_bare, default=None)
        name = f"{level} connection{'s' if level > 1 else ''}"
        if gw is None or other is None or not vs_bare(other):
            lines.append(f"- {name}: not judged ({'the gateway' if gw is None else peer} did not run or failed)")
            continue
        x = vs_bare(gw) / vs_bare(other)
        raw = median(gw.samples, "rps") / median(other.samples, "rps")
        p99, their_p99 = median(gw.samples, "p99_ms"), median(other.samples, "p99_ms")
        lines.append(f"- {name}: {x:.2f} × {other.config.key} (raw {median(gw.samples, 'rps'):,.0f} against "
                     f"{median(other.samples, 'rps'):,.0f} req/s, {raw:.2f} ×; goal ≥ {factor:g}: "
                     f"{_verdict(x >= factor)}); p99 {p99:.2f} against {their_p99:.2f} ms "
                     f"(lower: {_verdict(p99 < their_p99)}); both: {_verdict(x >= factor and p99 < their_p99)}.")
    return "\n".join(lines)
