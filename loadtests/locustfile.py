"""Locust scenarios for any inferloop gateway.

    locust --headless -f loadtests/locustfile.py -u 20 -r 10 -t 60s                        # own target
    locust --headless -f loadtests/locustfile.py -u 20 -r 10 -t 60s --host http://gw:8000 \
        --registry s3://models/prod --admin-token "$INFERLOOP_ADMIN_TOKEN"                # your gateway

With no --host, the target (`loadtests/target.py`: a prepared local registry with two tiny models,
`inferloop serve` on 127.0.0.1) is started here and stopped at the end.

Models are discovered from the gateway: the served names from `GET /v2/health/ready` (its `models`
map; the gateway has no `/v2/repository/index`), each signature and production version from
`GET /v2/models/{name}`. `--models a,b` narrows the set (and is what names the models if the
gateway does not list them). Payloads follow each production version's own inputs
(`loadtests/model_inputs.py`): tabular features drawn from the manifest's reference bins, other
models from the version's recorded example rows, read from `--registry` (or INFERLOOP_REGISTRY);
`--payloads DIR` replays recorded `<model>.json` files instead for the models they name.

Users:
- `OipUser`: Open Inference Protocol v2 infer, every model; `PredictUser`: `/v1` predict, tabular
  models. Both mix single rows (70 %) and batches of 2-16 rows.
- `--drift-per-minute X` shifts every float input by X of its standard deviations per minute of the
  test (0: no drift), so the gateway's drift monitor has something to find.
- `SwapUser` (only with `--swap-every` > 0): promotes `--swap-versions` (default 1,2) of
  `--swap-model` (default: the first model) in turn through the admin endpoint while traffic runs.

Requests are named per model in Locust's table; responses are counted per model and
`x-model-version`; with an admin token (`--admin-token` or INFERLOOP_ADMIN_TOKEN) the shadow and
drift state of every model is printed at the end.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from locust import HttpUser, between, constant, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loadtests.model_inputs import ModelMeta, ModelSampler, load_recorded, read_manifests  # noqa: E402
from loadtests.target import ADMIN_TOKEN  # noqa: E402

SAMPLERS: dict[str, ModelSampler] = {}
VERSIONS: Counter[tuple[str, str]] = Counter()
STARTED = time.monotonic()
_target: subprocess.Popen[bytes] | None = None
_target_registry: str | None = None


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--models", default="", help="comma-separated models to load (default: all the gateway serves)")
    parser.add_argument("--registry", default="", help="registry URI for reference statistics (env INFERLOOP_REGISTRY)")
    parser.add_argument("--payloads", default="", help="directory of recorded <model>.json payloads to replay")
    parser.add_argument("--admin-token", default="", help="admin token (env INFERLOOP_ADMIN_TOKEN): print shadow "
                        "and drift state at the end; needed by --swap-every")
    parser.add_argument("--drift-per-minute", type=float, default=0.0, help="float input shift, σ per minute")
    parser.add_argument("--swap-every", type=float, default=0.0, help="seconds between admin promote/rollback")
    parser.add_argument("--swap-model", default="", help="the model --swap-every promotes (default: the first)")
    parser.add_argument("--swap-versions", default="1,2", help="the versions --swap-every promotes in turn")


def _option(environment: Environment, name: str, default: Any = None) -> Any:
    opts = environment.parsed_options
    return getattr(opts, name, default) if opts is not None else default


def _admin_token(environment: Environment) -> str:
    token = _option(environment, "admin_token") or os.environ.get("INFERLOOP_ADMIN_TOKEN", "")
    return token or (ADMIN_TOKEN if _target is not None else "")


# -- the gateway: urllib, not httpx: gevent's patching breaks anyio's imports inside Locust ----------
def _get(host: str, path: str, token: str = "") -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(host.rstrip("/") + path,
                                     headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers.items()), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, dict(e.headers.items()), json.loads(body or b"null")
        except ValueError:
            return e.code, dict(e.headers.items()), body.decode(errors="replace")


def discover(host: str, wanted: list[str], registry: str, payloads: str) -> dict[str, ModelSampler]:
    """The models to load, each with a sampler for its production version's inputs."""
    _, _, ready = _get(host, "/v2/health/ready")
    served = sorted(ready.get("models") or {}) if isinstance(ready, dict) else []
    if wanted:
        unknown = [m for m in wanted if served and m not in served]
        if unknown:
            raise SystemExit(f"--models: {', '.join(unknown)} not served by {host} (it serves {', '.join(served)})")
        served = wanted
    if not served:
        raise SystemExit(f"{host} lists no models in /v2/health/ready: name them with --models a,b")
    metas = []
    for name in served:
        status, headers, body = _get(host, f"/v2/models/{name}")
        if status != 200:
            raise SystemExit(f"GET /v2/models/{name} on {host}: {status} {body}")
        version = headers.get("x-model-version") or headers.get("X-Model-Version")
        metas.append(msgspec.convert({**body, "name": name, "version": int(version) if version else None},
                                     ModelMeta))
    recorded = load_recorded(Path(payloads)) if payloads else {}
    manifests = {}
    if registry:
        manifests = read_manifests(registry, [(m.name, m.version) for m in metas
                                              if m.version is not None and m.name not in recorded])
    samplers = {m.name: ModelSampler(m, manifests.get(m.name), recorded.get(m.name)) for m in metas}
    for name, s in samplers.items():
        print(f"locustfile: {name} v{s.meta.version}: {len(s.meta.inputs)} input(s) "
              f"{', '.join(f'{t.name} {t.datatype} {t.shape}' for t in s.meta.inputs)}; payloads from {s.source}",
              file=sys.stderr)
    if not registry and not recorded:
        print("locustfile: no --registry / INFERLOOP_REGISTRY: payloads follow the signatures only, not the "
              "models' reference statistics", file=sys.stderr)
    return samplers


@events.init.add_listener
def _start_target(environment: Environment, **_kwargs: Any) -> None:
    global _target, _target_registry
    if environment.host or isinstance(environment.runner, WorkerRunner):
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = HERE.parent / ".inferloop" / "loadtest"
    _target = subprocess.Popen([sys.executable, "-m", "loadtests.target", "--port", str(port), "--root", str(root)],
                               cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    from loadtests.target import wait_ready

    wait_ready(port)
    _target_registry = f"file://{root / 'registry'}"
    environment.host = f"http://127.0.0.1:{port}"
    for user in environment.user_classes:
        user.host = environment.host


@events.test_start.add_listener
def _discover(environment: Environment, **_kwargs: Any) -> None:
    host = environment.host
    if not host:
        raise SystemExit("no --host and no target started")
    wanted = [m.strip() for m in (_option(environment, "models") or "").split(",") if m.strip()]
    registry = _option(environment, "registry") or os.environ.get("INFERLOOP_REGISTRY", "") or _target_registry or ""
    SAMPLERS.clear()
    SAMPLERS.update(discover(host, wanted, registry, _option(environment, "payloads") or ""))


# -- per-version counts: workers report to the master in distributed runs ---------------------------
@events.report_to_master.add_listener
def _to_master(data: dict[str, Any], **_kwargs: Any) -> None:
    data["versions"] = [[m, v, n] for (m, v), n in VERSIONS.items()]
    VERSIONS.clear()


@events.worker_report.add_listener
def _from_worker(data: dict[str, Any], **_kwargs: Any) -> None:
    for m, v, n in data.get("versions", []):
        VERSIONS[(m, v)] += n


@events.quitting.add_listener
def _report(environment: Environment, **_kwargs: Any) -> None:
    try:
        if isinstance(environment.runner, WorkerRunner):
            return
        print("responses per model and x-model-version:")
        for (model, version), n in sorted(VERSIONS.items()):
            print(f"  {model} v{version}: {n}")
        print("admin swaps:", SwapUser.swaps)
        token = _admin_token(environment)
        if token and environment.host:
            for name in sorted(SAMPLERS):
                for what in ("shadow", "drift"):
                    status, _, body = _get(environment.host, f"/admin/models/{name}/{what}", token)
                    print(f"{what} {name}: {json.dumps(_summary(what, body)) if status == 200 else (status, body)}")
        elif environment.host:
            print("shadow/drift state: give --admin-token (or INFERLOOP_ADMIN_TOKEN) to print it")
    finally:
        if _target is not None:
            _target.terminate()
            _target.wait(30)


def _summary(what: str, body: Any) -> Any:
    """The parts of the admin reports worth a line at the end of a load test."""
    if not isinstance(body, dict):
        return body
    if what == "drift":
        last = body.get("last_window") or {}
        return {k: body.get(k) for k in ("state", "reference_version", "threshold", "rows_in_window", "windows",
                                        "consecutive", "triggers")} | {"last_max_psi": last.get("max_psi")}
    report = body.get("report")
    scalars = {k: v for k, v in report.items() if not isinstance(v, (dict, list))} if isinstance(report, dict) else report
    return {k: v for k, v in body.items() if k != "report"} | {"report": scalars}


# -- users ------------------------------------------------------------------------------------------
def _shift(user: HttpUser) -> float:
    per_minute = _option(user.environment, "drift_per_minute", 0.0) or 0.0
    return per_minute * (time.monotonic() - STARTED) / 60


def _batch() -> int:
    return 1 if random.random() < 0.7 else random.randint(2, 16)


def _post(user: HttpUser, model: str, path: str, body: dict[str, Any], name: str) -> None:
    """POST, count the answering version, and fail the request in Locust's stats unless it is a 200."""
    with user.client.post(path, json=body, name=name, catch_response=True) as r:
        if r.status_code == 200:
            VERSIONS[(model, r.headers.get("x-model-version", "?"))] += 1
        else:
            r.failure(f"{r.status_code}: {r.text[:200]}")


class _ModelUser(HttpUser):
    abstract = True
    wait_time = between(0.001, 0.01)

    def on_start(self) -> None:
        self.rng = np.random.default_rng(random.getrandbits(32))

    def infer(self, name: str) -> None:
        body = SAMPLERS[name].infer_body(self.rng, _batch(), _shift(self))
        _post(self, name, f"/v2/models/{name}/infer", body, f"/v2/models/{name}/infer")


class OipUser(_ModelUser):
    weight = 3

    @task
    def infer_any(self) -> None:
        self.infer(random.choice(list(SAMPLERS)))


class PredictUser(_ModelUser):
    weight = 1

    @task
    def predict(self) -> None:
        tabular = [n for n, s in SAMPLERS.items() if s.meta.tabular]
        if not tabular:  # no model takes /v1 rows: this user sends OIP requests instead
            self.infer(random.choice(list(SAMPLERS)))
            return
        name = random.choice(tabular)
        body = SAMPLERS[name].predict_body(self.rng, _batch(), _shift(self))
        _post(self, name, f"/v1/models/{name}/predict", body, f"/v1/models/{name}/predict")


class SwapUser(HttpUser):
    """Moves production between two versions of the first model through the admin API while traffic runs."""

    wait_time = constant(1.0)
    fixed_count = 1
    swaps = 0

    def on_start(self) -> None:
        every = _option(self.environment, "swap_every", 0.0) or 0.0
        if not every:
            self.stop()
        self.every = every
        self.versions = [int(v) for v in (_option(self.environment, "swap_versions") or "1,2").split(",")]
        self.turn = 1

    @task
    def swap(self) -> None:
        time.sleep(max(0.0, self.every - 1.0))
        model = _option(self.environment, "swap_model") or sorted(SAMPLERS)[0]
        headers = {"authorization": f"Bearer {_admin_token(self.environment)}"}
        version = self.versions[self.turn % len(self.versions)]
        body = {"version": version, "stage": "production", "reason": "locust swap scenario"}
        r = self.client.post(f"/admin/models/{model}/promote", json=body, headers=headers,
                             name="/admin/models/[name]/promote")
        if r.status_code == 200:
            SwapUser.swaps += 1
            self.turn += 1

