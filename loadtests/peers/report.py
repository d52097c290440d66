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
    rss_mib: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(results: list[Result], ceiling: Result | None) -> str:
    head = ("| server | configuration | req/s | vs bare | p50 ms | vs bare | p99 ms | vs bare | RSS MiB | vs bare "
            "| failed requests |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base = ceiling if ceiling is not None and ceiling.ok else None
    for r in results:
        c = r.config
        if not r.ok:
            lines.append(f"| {c.server} | {c.variant} | did not run: see below | | | | | | | | |")
            continue
        rps, p50, p99 = r.median("rps"), r.median("p50_ms"), r.median("p99_ms")
        b = (base.median("rps"), base.median("p50_ms"), base.median("p99_ms"), base.rss_mib) if base else (0,) * 4
        if p99 > 0:
            latency = f"{p50:.2f} | {_ratio(p50, b[1])} | {p99:.2f} | {_ratio(p99, b[2])}"
        else:  # no request completed within wrk's timeout
            latency = "- | - | - | -"
        lines.append(f"| {c.server} | {c.variant} | {rps:,.0f} | {_ratio(rps, b[0])} | {latency} | "
                     f"{r.rss_mib:,.0f} | {_ratio(r.rss_mib, b[3])} | {r.errors} |")
    return "\n".join(lines)


def raw_runs(results: list[Result]) -> str:
    lines = []
    for r in results:
        if r.ok:
            runs = "; ".join(f"{s.rps:,.0f} req/s p50 {s.p50_ms:.2f} p99 {s.p99_ms:.2f}"
                             + (f" (errors: {s.detail})" if s.errors else "") for s in r.samples)
            lines.append(f"- {r.config.key}: {runs}")
    return "\n".join(lines)


def failures(results: list[Result]) -> str:
    return "\n".join(f"- {r.config.key}: {r.error}" for r in results if not r.ok)
