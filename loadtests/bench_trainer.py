"""Training throughput of the reference pipelines, and torchrun with 2 processes vs 1.

Runs the real command (`inferloop train --policy ... --json`) on generated data, each configuration
`--repeats` times, and reports the median training throughput (training rows × epochs / seconds of
the training loop, from the build summary) and the median wall time of the whole command (start-up,
data, training, gates, registration). The torchrun comparison uses the revenue-forecast policy with
`launcher: torchrun` and nproc 1 and 2, at the policy's batch size and at a larger one.

    python loadtests/bench_trainer.py [--days 30] [--rows-per-day 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def _policy(name: str, tmp: Path, label: str, **training: Any) -> Path:
    policy = yaml.safe_load((REPO / "policies" / f"{name}.yaml").read_text())
    policy["training"].update(training)
    policy["validation"].pop("notify_on_fail", None)
    path = tmp / f"{label}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def _train(policy: Path, data: Path, registry: str) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, "-m", "inferloop.cli", "train", "--policy", str(policy), "--data", str(data),
           "--registry", registry, "--json"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout), wall


def _measure(policy: Path, data: Path, registry: str, repeats: int) -> dict[str, Any]:
    runs = [_train(policy, data, registry) for _ in range(repeats)]
    summary = runs[-1][0]
    return {
        "rows_per_s": statistics.median(s["rows_per_second"] for s, _ in runs),
        "train_s": statistics.median(s["train_seconds"] for s, _ in runs),
        "wall_s": statistics.median(w for _, w in runs),
        "rows": summary["rows_train"], "epochs": summary["epochs"], "world": summary["world_size"],
        "metrics": summary["metrics"], "verdict": summary["verdict"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows-per-day", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-batch", type=int, default=1024)
    args = parser.parse_args()

    from inferloop.trainer.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp_name:
        tmp = Path(tmp_name)
        registry = f"file://{tmp / 'registry'}"
        data = {
            "revenue-forecast": tmp / "revenue",
            "churn": tmp / "churn",
        }
        generate(data["revenue-forecast"], kind="regression", days=args.days, rows_per_day=args.rows_per_day)
        generate(data["churn"], kind="classification", days=args.days, rows_per_day=args.rows_per_day)

        rows = []
        for name in ("revenue-forecast", "churn"):
            r = _measure(_policy(name, tmp, name), data[name], registry, args.repeats)
            rows.append((f"{name} (local, 1 process)", r))
        pairs = []
        for batch in (None, args.large_batch):
            extra = {"batch_size": batch} if batch else {}
            one = _measure(_policy("revenue-forecast", tmp, f"tr1-{batch}", launcher="torchrun", nproc=1, **extra),
                           data["revenue-forecast"], registry, args.repeats)
            two = _measure(_policy("revenue-forecast", tmp, f"tr2-{batch}", launcher="torchrun", nproc=2, **extra),
                           data["revenue-forecast"], registry, args.repeats)
            label = f"batch {batch}" if batch else "policy batch"
            rows += [(f"revenue-forecast torchrun 1 proc, {label}", one), (f"revenue-forecast torchrun 2 procs, {label}", two)]
            pairs.append((label, two["rows_per_s"] / one["rows_per_s"], two["wall_s"] / one["wall_s"]))

    print(f"# bench_trainer: {args.days} days × {args.rows_per_day} rows, median of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print()
    print("| configuration | train rows | epochs | rows/s (training loop) | training s | command wall s | holdout metrics | gate |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for label, r in rows:
        m = " ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items() if v is not None)
        print(f"| {label} | {r['rows']} | {r['epochs']} | {r['rows_per_s']:,.0f} | {r['train_s']:.2f} | "
              f"{r['wall_s']:.2f} | {m} | {r['verdict']} |")
    print()
    print("| torchrun 2 procs / 1 proc | throughput ratio | wall-time ratio |")
    print("|---|---:|---:|")
    for label, ratio, wall in pairs:
        print(f"| {label} | {ratio:.2f}× | {wall:.2f}× |")


if __name__ == "__main__":
    main()
