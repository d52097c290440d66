"""What the trainer adds around a user's training function, as a ratio to the function's own time.

Runs the real command (`inferloop train --policy ... --json`) on generated revenue data for a small
and a large window, with two entrypoints: the built-in MLP and a user's own module
(`shop.tabular:fit` from tests/fixtures/shop_project, imported from a copy of that project). The
build summary's `phases` give wall seconds per phase on the main rank; the overhead is

    package (torch.export + open) + holdout (run through the artifact, metrics)
      + gate (production's artifact on the same holdout) + register (drift reference through the
      artifact, hashing, manifest, blob)
    ───────────────────────────────────────────────────────────────────────────────  = overhead ratio
    train (the entrypoint's own time)

Data loading (read, hash, parse the partitions) is reported beside it. Each build runs against a
registry that already holds a production version (gate 2 has work to do); medians of `--repeats`.

    python loadtests/bench_trainer_overhead.py [--repeats 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "tests" / "fixtures" / "shop_project"
WINDOWS = {"small": (7, 1_000), "large": (30, 20_000)}  # (days, rows per day)
OVERHEAD = ("package", "holdout", "gate", "register")


def _policy(project: Path, data: Path, days: int, entrypoint: str, epochs: int, seed: int) -> Path:
    from inferloop.trainer.synthetic import REGRESSION_FEATURES

    training: dict[str, Any] = {"data": {"source": str(data), "latest": days}, "features": REGRESSION_FEATURES,
                                "target": "revenue", "kind": "regression", "seed": seed}
    if entrypoint == "builtin":
        training.update(hidden=[64, 32], lr=0.01, epochs=epochs, batch_size=256)
    else:
        training.update(entrypoint=entrypoint, params={"epochs": epochs, "width": 64, "lr": 0.01})
    policy = {"model": "bench", "training": training,
              "validation": {"max_rmse": 1e9, "compare_to": "production", "tolerance": -1e9,
                             "promote_on_pass": "production"}}
    path = project / "policies" / f"{entrypoint.replace(':', '_')}-{seed}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def _build(policy: Path, registry: str) -> dict[str, Any]:
    cmd = [sys.executable, "-P", "-m", "inferloop.cli", "train", "--policy", str(policy), "--registry", registry,
           "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    from inferloop.trainer.synthetic import generate

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        project = Path(tmp) / "project"
        shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
        for window, (days, per_day) in WINDOWS.items():
            data = Path(tmp) / f"data-{window}"
            generate(data, kind="regression", days=days, rows_per_day=per_day, seed=1)
            for entrypoint in ("builtin", "shop.tabular:fit"):
                registry = f"file://{tmp}/reg-{window}-{entrypoint.replace(':', '_')}"
                _build(_policy(project, data, days, entrypoint, args.epochs, seed=0), registry)  # production for gate 2
                # a new seed each repeat: a new version each time (an identical build is not registered)
                runs = [_build(_policy(project, data, days, entrypoint, args.epochs, seed=1 + r), registry)
                        for r in range(args.repeats)]
                phases = {k: statistics.median(r["phases"].get(k, 0.0) for r in runs)
                          for k in ("load", "train", *OVERHEAD)}
                overhead = sum(phases[k] for k in OVERHEAD)
                rows.append({"window": window, "rows": runs[0]["rows_train"] + runs[0]["rows_holdout"],
                             "entrypoint": entrypoint, **phases, "overhead": overhead,
                             "ratio": overhead / max(phases["train"], 1e-9)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"# trainer overhead around the entrypoint, {args.epochs} epochs, median of {args.repeats} "
          f"({platform.processor() or platform.machine()}, python {platform.python_version()})\n")
    print("| window | rows | entrypoint | train s | package s | holdout s | gate s | register s | overhead / train "
          "| load s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['window']} | {r['rows']:,} | `{r['entrypoint']}` | {r['train']:.2f} | {r['package']:.2f} | "
              f"{r['holdout']:.2f} | {r['gate']:.2f} | {r['register']:.2f} | **{r['ratio']:.2f}×** | "
              f"{r['load']:.2f} |")


if __name__ == "__main__":
    main()
