"""The human-readable end of `inferloop train`: one block that says what was built and what happened."""

from __future__ import annotations

from inferloop.trainer.pipeline import BuildSummary


def _metrics(values: dict[str, float | None]) -> str:
    return "  ".join(f"{k}={'missing' if v is None else f'{v:.6g}'}" for k, v in values.items())


def print_summary(s: BuildSummary) -> None:
    first, last = (s.partitions[0], s.partitions[-1]) if s.partitions else ("", "")
    lines = []
    if s.mode == "reproduce":
        verdict = "MATCHES" if s.digest_matches else "DIFFERS"
        lines.append(f"reproduce {s.model} v{s.reproduced_version}: artifact digest {verdict}")
        lines.append(f"  rebuilt   sha256 {s.digest}")
        lines.append(f"  recorded  sha256 {s.expected_digest}")
        lines.append(f"  metrics   {_metrics(s.metrics)}")
        if not s.digest_matches:
            diffs = "  ".join(f"{k} {'n/a' if v is None else f'{v:+.3g}'}" for k, v in s.metric_diffs.items())
            lines.append(f"  vs record {diffs}")
    else:
        state = "new version" if s.created else "identical build, existing version"
        lines.append(f"built {s.model} v{s.version} ({state})")
        lines.append(f"  artifact  sha256 {s.digest}")
        lines.append(f"  metrics   {_metrics(s.metrics)}  (holdout, {s.rows_holdout} rows)")
        gate = {"passed": "PASSED", "failed": "FAILED", "skipped": "no validation in the policy"}[s.verdict]
        lines.append(f"  gates     {gate}")
        if s.validation is not None:
            lines += [f"            {'ok  ' if c.passed else 'FAIL'} {c.detail}" for c in s.validation.checks]
        if s.promoted:
            lines.append(f"  promoted  {s.promoted}")
        for n in s.notifications:
            lines.append(f"  notified  {n.target}: {'ok' if n.ok else n.detail}")
    lines.append(f"  data      {len(s.partitions)} partition(s) {first}…{last}, digest {s.data_digest[:16]}…")
    epochs = f"{s.epochs} epochs, " if s.epochs else ""
    lines.append(f"  training  {s.entrypoint}: {epochs}{s.rows_train} rows, {s.world_size} process(es) on "
                 f"{s.device}: {s.train_seconds:.2f} s, {s.rows_per_second:,.0f} rows/s")
    if s.training_metrics:
        lines.append(f"            {_metrics(dict(s.training_metrics))}")
    for w in s.warnings:
        lines.append(f"  warning   {w}")
    print("\n".join(lines))
