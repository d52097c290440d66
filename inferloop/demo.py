"""`inferloop demo`: the whole loop on the embedded default, with real processes on 127.0.0.1.

    generate data → train v1 → gates → production → trainer + gateway start → live traffic →
    the traffic drifts → the gateway detects it and calls the trainer → v2 trains on the newest
    partitions, passes both gates against v1 on the same holdout → shadow → promoted on evidence →
    hot swap → drift against the new reference falls back under the threshold

It ends with a timeline from the registry's audit log and the numbers that show it worked, and leaves
the work directory (data, policy, registry, logs, prediction log) for inspection. From the command
line it also points the project config (`.inferloop/config.json` in the working directory) at the
demo's registry, so the commands it prints next (`inferloop registry list`, `inferloop serve ...`)
work on that registry without flags.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from inferloop.registry import StagePointer

MODEL = "revenue-forecast"
# one plausible row of the demo's nine features (price, competitor_price, marketing_spend, visits,
# discount, store_size, temperature, noise_a, noise_b), as the README's requests send it
EXAMPLE_ROW = "[42.0, 41.5, 5000.0, 400, 0.2, 280.0, 15.5, 0.0, 500.0]"
TOKEN = "demo-admin-token"
DRIFT_FROM_DAY = 21

POLICY = """\
# Written by `inferloop demo`: the revenue-forecast loop, tuned to finish in minutes.
model: revenue-forecast
training:
  data: {{source: data/revenue-forecast, latest: 7}}
  features: [{features}]
  target: revenue
  kind: regression
{model_keys}
  seed: 42
validation:
  max_rmse: 60.0                # gate 1: absolute
  compare_to: production        # gate 2: same holdout, same run
  tolerance: -1.0               # at most 1.0 worse than production
  promote_on_pass: shadow       # candidates earn production on live evidence
shadow:
  sample_rate: 1.0
  min_requests: {shadow_min}
  max_prediction_psi: 5.0       # a concept shift moves predictions on purpose; the gates judged accuracy
  min_agreement: 0.0
  max_p99_latency_ratio: 5.0
  auto_promote: true
monitor:
  methods: {{psi: {{threshold: 0.10, exit_threshold: 0.08}}}}
  window: {window}
  min_samples: {min_samples}
  consecutive: 2
  cooldown_s: 600
  on_trigger: {{action: retrain}}
"""


@dataclass
class DemoConfig:
    workdir: Path
    registry: str
    s3_endpoint: str | None = None
    rows_per_day: int = 1500
    epochs: int = 12
    # the user's training code instead of the built-in MLP: `entrypoint` with `params`, imported from
    # `project` (a directory copied into the work directory, which the policy's project root becomes)
    entrypoint: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    project: Path | None = None
    window: int = 1000
    replicas: int = 1
    rows_per_request: int = 25
    timeout_s: float = 300.0
    say: Any = print
    # where to write the project config pointing at the demo's registry (None: write none); the
    # command line passes the working directory
    project_dir: Path | None = None


@dataclass
class DemoResult:
    ok: bool
    production_version: int | None
    versions: int
    served: int
    failed: int
    by_version: dict[int, int]
    psi_before: float | None
    psi_after: float | None
    threshold: float
    metrics_v1: dict[str, float]
    gate_v2: dict[str, Any]
    retrain_jobs: int
    timeline: list[tuple[str, str]] = field(default_factory=list)


def register_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole closed loop locally: train, serve, drift, retrain, swap")
    p.add_argument("--workdir", default=".inferloop/demo", help="where data, policy, logs go (wiped first)")
    p.add_argument("--registry", default=None, help="registry URI (default: file://WORKDIR/model-registry)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint for an s3:// registry")
    p.add_argument("--rows-per-day", type=int, default=1500)
    p.add_argument("--replicas", type=int, default=1, help="gateway replicas sharing the registry")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).absolute()
    cfg = DemoConfig(workdir=workdir, registry=args.registry or f"file://{workdir / 'model-registry'}",
                     s3_endpoint=args.s3_endpoint, rows_per_day=args.rows_per_day, replicas=args.replicas,
                     timeout_s=args.timeout, project_dir=Path.cwd())
    try:
        result = run_demo(cfg)
    except (RuntimeError, TimeoutError) as exc:
        from inferloop.registry.commandline import UsageError

        raise UsageError(f"demo stopped: {exc}") from None
    except KeyboardInterrupt:
        # run_demo has stopped its processes and said which; say where the work is
        print(f"\ninterrupted: the demo stopped; its work directory is left in {workdir} (logs in "
              f"{workdir / 'logs'}); `inferloop demo` again starts over", file=sys.stderr)
        return 130
    return 0 if result.ok else 1


# -- processes --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # (host, port) for AF_INET; typeshed types the address as Any
        return port


class Service:
    """A child process of ours (`inferloop ...`), logging to a file, stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], health_url: str) -> None:
        self.name = name
        self.health_url = health_url
        self.log_path = cwd / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "inferloop.cli", *argv], cwd=cwd, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.health_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def _cli(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "inferloop.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


# -- traffic ----------------------------------------------------------------------------------
class Traffic:
    """Threads posting `/v1/models/NAME/predict` batches round-robin over the gateways; counts every
    response by the version that served it, and every failure."""

    def __init__(self, urls: list[str], rows_per_request: int, threads: int = 2) -> None:
        self.urls = urls
        self.rows_per_request = rows_per_request
        self.by_version: Counter[int] = Counter()
        self.failed = 0
        self.failures: list[str] = []
        self._rows: np.ndarray | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def use(self, rows: np.ndarray) -> None:
        self._rows = rows

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.ident is not None:  # started (a Ctrl-C can land between creating and starting them)
                t.join(30)

    @property
    def served(self) -> int:
        return sum(self.by_version.values())

    def _loop(self, index: int) -> None:
        import httpx

        rng = np.random.default_rng(index)
        with httpx.Client(timeout=30) as client:
            i = index
            while not self._stop.is_set():
                rows = self._rows
                if rows is None:
                    time.sleep(0.05)
                    continue
                pick = rows[rng.integers(0, len(rows), self.rows_per_request)]
                url = f"{self.urls[i % len(self.urls)]}/v1/models/{MODEL}/predict"
                i += 1
                r: httpx.Response | httpx.HTTPError  # the failure's text is logged below either way
                try:
                    r = client.post(url, json={"instances": pick.tolist()})
                    ok = r.status_code == 200
                    version = int(r.headers.get("x-model-version", 0)) if ok else None
                except httpx.HTTPError as exc:
                    ok, version, r = False, None, exc
                with self._lock:
                    if ok and version:
                        self.by_version[version] += 1
                    else:
                        self.failed += 1
                        self.failures.append(str(getattr(r, "text", r))[:200])
                time.sleep(0.01)


def _feature_rows(data_dir: Path, days: list[dt.date], features: list[str]) -> np.ndarray:
    import pyarrow.parquet as pq

    tables = [pq.read_table(data_dir / f"{d:%Y-%m-%d}.parquet", columns=features) for d in days]
    return np.column_stack([np.concatenate([t.column(f).to_numpy() for t in tables]) for f in features]).astype(
        np.float32)


# -- the demo ---------------------------------------------------------------------------------
def run_demo(cfg: DemoConfig) -> DemoResult:
    import httpx

    from inferloop.registry import Registry
    from inferloop.trainer.synthetic import REGRESSION_FEATURES, generate

    say = cfg.say
    t0 = time.monotonic()

    def step(text: str) -> None:
        say(f"[{time.monotonic() - t0:6.1f}s] {text}")

    work = cfg.workdir
    marker = work / ".inferloop-demo"
    if work.exists() and any(work.iterdir()):
        if not marker.exists():  # never wipe a directory the demo did not create
            raise RuntimeError(f"{work} exists and is not a demo work directory; choose another --workdir")
        shutil.rmtree(work)
    (work / "policies").mkdir(parents=True)
    marker.touch()
    env = {**os.environ, "INFERLOOP_REGISTRY": cfg.registry, "INFERLOOP_ADMIN_TOKEN": TOKEN,
           "PYTHONUNBUFFERED": "1"}
    if cfg.s3_endpoint:
        env["AWS_ENDPOINT_URL"] = cfg.s3_endpoint
    data_dir = work / "data" / MODEL
    features = REGRESSION_FEATURES  # the columns `generate` writes; the policy trains on all of them
    if cfg.project is not None:
        shutil.copytree(cfg.project, work, dirs_exist_ok=True)
    if cfg.entrypoint is None:
        model_keys = f"  hidden: [64, 32]\n  lr: 0.01\n  epochs: {cfg.epochs}\n  batch_size: 128"
    else:
        model_keys = f"  entrypoint: {json.dumps(cfg.entrypoint)}\n  params: {json.dumps(cfg.params)}"
    policy = POLICY.format(features=", ".join(features), model_keys=model_keys, window=cfg.window,
                           min_samples=cfg.window // 2, shadow_min=max(200, cfg.window // 2))
    (work / "policies" / f"{MODEL}.yaml").write_text(policy)
    start = dt.date(2024, 1, 1)

    def day(n: int) -> dt.date:  # 1-based day numbers
        return start + dt.timedelta(days=n - 1)

    step(f"generating 20 days of data ({cfg.rows_per_day} rows/day) in {data_dir}")
    generate(data_dir, kind="regression", days=DRIFT_FROM_DAY - 1, rows_per_day=cfg.rows_per_day, seed=7,
             start=start)
    step("training v1 on the 7 newest partitions, then the two gates")
    r = _cli(["train", "--policy", f"policies/{MODEL}.yaml", "--json", "--actor", "demo", "--reason",
              "first build"], work, env)
    if r.returncode != 0:
        raise RuntimeError(f"training v1 failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    v1 = json.loads(r.stdout)
    step(f"v1 registered: rmse {v1['metrics']['rmse']:.3f}, gates {v1['verdict']}")
    r = _cli(["registry", "promote", MODEL, str(v1["version"]), "--stage", "production", "--reason",
              "first deployment"], work, env)
    if r.returncode != 0:
        raise RuntimeError(f"promoting v1 failed: {r.stderr.strip()}")
    step("v1 promoted to production")
    config_written = _point_project_config(cfg)

    services: list[Service] = []
    traffic: Traffic | None = None
    try:
        trainer_port = _free_port()
        trainer = Service("trainer", ["trainer", "serve", "--policies", "policies", "--port", str(trainer_port),
                                      "--state-dir", str(work / "trainer-state")], work, env,
                          f"http://127.0.0.1:{trainer_port}/healthz")
        services.append(trainer)
        urls = []
        for i in range(cfg.replicas):
            port = _free_port()
            gw = Service(f"gateway-{i}", ["serve", "--model", MODEL, "--port", str(port), "--device", "cpu",
                                          "--policies", "policies", "--trainer-url", f"http://127.0.0.1:{trainer_port}",
                                          "--poll-interval", "0.5", "--prediction-log", f"logs/predictions-{i}",
                                          "--cache-dir", f"gateway-cache-{i}", "--shadow-interval", "1",
                                          "--log-level", "warning"], work, env,
                         f"http://127.0.0.1:{port}/v2/health/ready")
            services.append(gw)
            urls.append(f"http://127.0.0.1:{port}")
        for s in services:
            s.wait_healthy(120)
        step(f"trainer and {cfg.replicas} gateway replica(s) serving on 127.0.0.1")
        admin = httpx.Client(timeout=10, headers={"authorization": f"Bearer {TOKEN}"})

        def drift_state(url: str) -> dict[str, Any]:
            state: dict[str, Any] = admin.get(f"{url}/admin/models/{MODEL}/drift").json()
            return state

        traffic = Traffic(urls, cfg.rows_per_request)
        traffic.use(_feature_rows(data_dir, [day(n) for n in range(14, 21)], features))
        traffic.start()
        deadline = t0 + cfg.timeout_s

        def wait(what: str, check: Callable[[], Any]) -> Any:  # returns check()'s first truthy value
            while time.monotonic() < deadline:
                value = check()
                if value:
                    return value
                time.sleep(0.25)
            raise TimeoutError(f"timed out waiting for {what}")

        wait("two windows of live traffic", lambda: drift_state(urls[0]).get("windows", 0) >= 2)
        st = drift_state(urls[0])
        psi_steady = st["last_window"]["max_psi"]
        step(f"live traffic, no drift: max feature PSI {psi_steady:.3f} (threshold {st['threshold']}, "
             f"noise floor ~{max(f['noise_floor'] for f in st['last_window']['features']):.3f})")

        step(f"new partitions arrive from day {DRIFT_FROM_DAY} on: inputs shift and the target relation changes")
        generate(data_dir, kind="regression", days=30, rows_per_day=cfg.rows_per_day, seed=7, start=start,
                 drift_from=DRIFT_FROM_DAY)
        traffic.use(_feature_rows(data_dir, [day(n) for n in range(24, 31)], features))
        with Registry.open(cfg.registry, s3_endpoint=cfg.s3_endpoint) as reg:
            detected = wait("drift detection", lambda: reg.history(MODEL, kinds={"drift_detected"}))
            step(f"drift detected: {detected[0].reason}")
            wait("the retrain request", lambda: reg.history(MODEL, kinds={"retrain_requested"}))
            step("gateway called the trainer; retraining on the newest partitions")
            v2 = wait("v2 registered", lambda: reg.latest_version(MODEL) >= 2 and reg.get_manifest(MODEL, 2))
            checks = {c.gate: c for c in (v2.validation.checks if v2.validation else [])}
            rel = checks.get("relative")
            step(f"v2 registered: gates {'passed' if v2.validation and v2.validation.passed else 'FAILED'}"
                 + (f" (same holdout: v2 rmse {rel.candidate:.3f} vs v1 {rel.production:.3f})" if rel else ""))
            # v1 was promoted to production above and nothing in the loop clears a stage: that pointer exists
            wait("v2 in shadow", lambda: (p := reg.get_pointer(MODEL, "shadow")) is not None and p.version == 2
                 or (cast("StagePointer", reg.get_pointer(MODEL, "production")).version == 2))
            step("v2 in shadow: mirrored live traffic, compared with v1")
            wait("v2 in production", lambda: cast("StagePointer", reg.get_pointer(MODEL, "production")).version == 2)
            step("shadow rules met: v2 promoted to production on evidence")
            wait("the hot swap", lambda: traffic.by_version.get(2, 0) > 0)
            step("gateway hot-swapped to v2 with no restart")
            windows_at_swap = drift_state(urls[0]).get("windows", 0)
            wait("drift against v2's reference",
                 lambda: (s := drift_state(urls[0])).get("reference_version") == 2 and s.get("windows", 0) >= 2
                 and s.get("windows", 0) != windows_at_swap)
            st = drift_state(urls[0])
            psi_after = st["last_window"]["max_psi"]
            step(f"after the swap: max feature PSI {psi_after:.3f} against v2's reference ({st['state']})")
            traffic.stop()
            jobs = httpx.get(f"http://127.0.0.1:{trainer_port}/v1/jobs", params={"model": MODEL}, timeout=10).json()
            events = reg.history(MODEL, limit=1000)
            production = reg.get_pointer(MODEL, "production")
            versions = reg.latest_version(MODEL)
        psi_before = max(float(e.details.get("max_psi", 0)) for e in detected)
    except KeyboardInterrupt:
        stopped = ", ".join(f"{s.name} (pid {s.proc.pid})" for s in services if s.proc.poll() is None)
        say(f"\ninterrupted: stopping {stopped or 'nothing (no process was running)'}")
        raise
    finally:
        if traffic is not None:
            traffic.stop()
        for s in reversed(services):
            s.stop()

    job_list = jobs.get("jobs", jobs) if isinstance(jobs, dict) else jobs
    timeline = [(e.time, f"{e.kind}{'' if e.version is None else f' v{e.version}'}"
                 f"{'' if not e.stage else f' [{e.stage}]'}  {e.actor}  {_short(e.reason)}") for e in events]
    result = DemoResult(
        ok=production is not None and production.version == 2 and traffic.failed == 0
        and psi_after < st["threshold"],
        production_version=production.version if production else None, versions=versions, served=traffic.served,
        failed=traffic.failed, by_version=dict(traffic.by_version), psi_before=psi_before, psi_after=psi_after,
        threshold=st["threshold"], metrics_v1=v1["metrics"],
        gate_v2={"candidate_rmse": rel.candidate if rel else None, "v1_rmse_same_holdout": rel.production if rel
                 else None, "passed": bool(v2.validation and v2.validation.passed)},
        retrain_jobs=len(job_list), timeline=timeline,
    )
    say("\ntimeline (registry audit log)")
    for when, what in timeline:
        lines = textwrap.wrap(what, 100, subsequent_indent=" " * 4) or [""]
        say(f"  {when}  {lines[0]}")
        for line in lines[1:]:
            say(f"  {'':{len(when)}}  {line}")
    say("\nresult")
    say(f"  PSI (max over features): {psi_before:.3f} at the trip -> {psi_after:.3f} after the swap "
        f"(threshold {result.threshold})")
    if rel:
        say(f"  holdout RMSE, same data, same run: v1 {rel.production:.3f} -> v2 {rel.candidate:.3f}")
    say(f"  requests served: {result.served} ({', '.join(f'v{v}: {n}' for v, n in sorted(result.by_version.items()))})"
        f"; failed requests: {result.failed}")
    say(f"  retrain jobs: {result.retrain_jobs}; production is v{result.production_version}")
    say(f"  left for inspection: {work} (policy, data, logs, prediction log) and the registry {cfg.registry}")
    _say_next(cfg, config_written, say)
    say(f"done in {time.monotonic() - t0:.0f}s: {'the loop closed' if result.ok else 'THE LOOP DID NOT CLOSE'}")
    return result


_LONG_FLOAT = re.compile(r"(?<![\w.])(-?\d+\.\d{4})\d+")


def _short(reason: str, limit: int = 240) -> str:
    """A reason for the timeline: long floats (a report's raw 0.5663398159316936) to four decimals,
    and cut at a word boundary with an ellipsis, never mid-word."""
    text = _LONG_FLOAT.sub(r"\1", " ".join(reason.split()))
    return text if len(text) <= limit else textwrap.shorten(text, limit, placeholder=" …")


def _point_project_config(cfg: DemoConfig) -> Path | None:
    """Point the project config at the demo's registry as soon as it holds a production version, so
    the registry commands work on it even if the demo is interrupted later."""
    from inferloop.registry.project_config import write_demo_config

    return None if cfg.project_dir is None else write_demo_config(cfg.registry, cfg.project_dir)


def _say_next(cfg: DemoConfig, written: Path | None, say: Callable[..., Any]) -> None:
    """Where the project config now points, and the commands to run next (the README's)."""
    from inferloop.registry.project_config import CONFIG_PATH

    if cfg.project_dir is None:
        return
    if written is None:
        say(f"\n{cfg.project_dir / CONFIG_PATH} exists and is not the demo's: left as it is, so pass "
            f"--registry {cfg.registry} to the commands below")
    else:
        say(f"\nregistry commands in this directory now use the demo's registry ({cfg.registry}), through "
            f"{CONFIG_PATH}; delete that file to go back to the default")
    endpoint = f" (and AWS_ENDPOINT_URL={cfg.s3_endpoint})" if cfg.s3_endpoint else ""
    say(f"next{endpoint}:")
    for line in ("inferloop registry list", f"inferloop registry show {MODEL}",
                 f"inferloop registry history {MODEL}",
                 f"inferloop serve --model {MODEL}      # port 8000; then, from another terminal:",
                 f"curl -s localhost:8000/v2/models/{MODEL}",
                 f"curl -s localhost:8000/v1/models/{MODEL}/predict -d '{{\"instances\": [{EXAMPLE_ROW}]}}'"):
        say(f"  {line}")
