"""Results of one driver run: medians per configuration, ratios to the bare ceiling, the table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .configs import Config
from .wrk import Sample


@dataclass
class Result:
    config: Config
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


def raw_runs(results: list[Result], duration: int) -> str:
    lines = []
    for r in results:
        if not r.ok:
            continue
        lines.append(f"- {r.config.key}: {_runs(r.samples)}")
        if r.reference:
            idle = 100 * r.idle_cpu_s / (duration * len(r.reference))
            lines.append(f"  - bare alongside: {_runs(r.reference)} (this server idle meanwhile: "
                         f"{idle:.1f} % of a core)")
    return "\n".join(lines)


def failures(results: list[Result]) -> str:
    return "\n".join(f"- {r.config.key}: {r.error}" for r in results if not r.ok)
