"""Locust scenarios for the gateway.

    locust --headless -f loadtests/locustfile.py -u 20 -r 10 -t 60s

With no --host, the target (`loadtests/target.py`: a prepared local registry with two tiny models,
`inferloop serve` on 127.0.0.1) is started here and stopped at the end. Users:

- `OipUser`: Open Inference Protocol v2 infer; `PredictUser`: `/v1` predict. Both replay recorded
  payloads (`loadtests/payloads/`), mixing single rows (70 %) and batches of 2-16 rows over both models.
- `--drift-per-minute X` shifts every feature by X standard deviations per minute of the test
  (0: no drift), so the gateway's drift monitor has something to find.
- `SwapUser` (weight 0 unless `--swap-every` > 0): promotes v2 and rolls back through the admin
  endpoint while traffic runs. Every response is counted per `x-model-version`; the counts and the
  number of swaps are printed at the end.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from locust import HttpUser, between, constant, events, task

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loadtests.target import ADMIN_TOKEN, MODELS  # noqa: E402

PAYLOADS = {name: json.loads((HERE / "payloads" / f"{name}.json").read_text()) for name in MODELS}
VERSIONS: Counter[str] = Counter()
STARTED = time.monotonic()
_target: subprocess.Popen[bytes] | None = None


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # noqa: ANN001
    parser.add_argument("--drift-per-minute", type=float, default=0.0, help="feature shift, σ per minute")
    parser.add_argument("--swap-every", type=float, default=0.0, help="seconds between admin promote/rollback")


@events.init.add_listener
def _start_target(environment, **_kwargs) -> None:  # noqa: ANN001
    global _target
    if environment.host:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _target = subprocess.Popen([sys.executable, "-m", "loadtests.target", "--port", str(port)], cwd=HERE.parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    from loadtests.target import wait_ready

    wait_ready(port)
    environment.host = f"http://127.0.0.1:{port}"
    for user in environment.user_classes:
        user.host = environment.host


@events.quitting.add_listener
def _report(environment, **_kwargs) -> None:  # noqa: ANN001
    print("responses per x-model-version:", dict(sorted(VERSIONS.items())))
    print("admin swaps:", SwapUser.swaps)
    if _target is not None:
        _target.terminate()
        _target.wait(30)


def _rows(user: HttpUser) -> tuple[str, list[list[float]]]:
    name = random.choice(list(MODELS))
    data = PAYLOADS[name]["rows"]
    n = 1 if random.random() < 0.7 else random.randint(2, 16)
    rows = random.sample(data, n)
    shift = user.environment.parsed_options.drift_per_minute * (time.monotonic() - STARTED) / 60 \
        if user.environment.parsed_options else 0.0
    if shift:
        rows = [[v + shift for v in row] for row in rows]
    return name, rows


def _post(user: HttpUser, path: str, body: dict, name: str) -> None:
    """POST, count the answering version, and fail the request in Locust's stats unless it is a 200."""
    with user.client.post(path, json=body, name=name, catch_response=True) as r:
        if r.status_code == 200:
            VERSIONS[f"{path.split('/')[3]} v{r.headers.get('x-model-version')}"] += 1
        else:
            r.failure(f"{r.status_code}: {r.text[:200]}")


class OipUser(HttpUser):
    wait_time = between(0.001, 0.01)
    weight = 3

    @task
    def infer(self) -> None:
        name, rows = _rows(self)
        body = {"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                            "data": [v for r in rows for v in r]}]}
        _post(self, f"/v2/models/{name}/infer", body, "/v2/models/[name]/infer")


class PredictUser(HttpUser):
    wait_time = between(0.001, 0.01)
    weight = 1

    @task
    def predict(self) -> None:
        name, rows = _rows(self)
        _post(self, f"/v1/models/{name}/predict", {"instances": rows}, "/v1/models/[name]/predict")


class SwapUser(HttpUser):
    """Moves production between v1 and v2 of one model through the admin API while traffic runs."""

    wait_time = constant(1.0)
    fixed_count = 1
    swaps = 0

    def on_start(self) -> None:
        every = self.environment.parsed_options.swap_every if self.environment.parsed_options else 0.0
        if not every:
            self.stop()
        self.every = every
        self.next_version = 2

    @task
    def swap(self) -> None:
        time.sleep(max(0.0, self.every - 1.0))
        headers = {"authorization": f"Bearer {os.environ.get('INFERLOOP_ADMIN_TOKEN', ADMIN_TOKEN)}"}
        body = {"version": self.next_version, "stage": "production", "reason": "locust swap scenario"}
        r = self.client.post("/admin/models/tiny-regression/promote", json=body, headers=headers,
                             name="/admin/models/[name]/promote")
        if r.status_code == 200:
            SwapUser.swaps += 1
            self.next_version = 1 if self.next_version == 2 else 2
