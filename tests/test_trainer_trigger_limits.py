"""The trainer's trigger endpoint against callers it should not trust: whoever can send inference
traffic can make drift trip, so drift and shadow triggers start at most one job per model per
`trigger_interval_s`; the service will not listen off loopback without its token; a body nested
1000 deep is a 400. Real service (uvicorn in a thread, or the CLI in a child), real job store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferloop.trainer.app import create_app
from inferloop.trainer.jobs import Job, JobStore, RequestRecord, new_job_id
from inferloop.trainer.service import ServiceSettings, TrainerService

from .trainer_support import ServerThread, make_data, policy_dict, write_policy

FOREVER = 1_000_000  # epochs: a job that runs until the service stops it


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    data = make_data(tmp_path)
    policies = tmp_path / "policies"
    policies.mkdir()
    for model in ("recent", "old"):
        write_policy(policies / f"{model}.yaml", policy_dict(data, model=model, epochs=FOREVER))
    return {"tmp": tmp_path, "policies": policies, "registry": f"file://{tmp_path / 'reg'}", "state": tmp_path / "state"}


def _past_drift_job(state: Path, model: str, age: timedelta) -> Job:
    """A finished job a drift trigger started `age` ago, as the store keeps it."""
    created = (datetime.now(UTC) - age).isoformat()
    record = RequestRecord(created, "drift", "drift", idempotency_key=f"{model}-past")
    job = Job(id=new_job_id(), model=model, state="failed", created_at=created, policy="p", requests=[record],
              finished_at=created, error="interrupted")
    store = JobStore(state).open()
    try:
        store.save(job)
    finally:
        store.close()
    return job


@pytest.fixture
def url(env: dict[str, Any]) -> Iterator[str]:
    _past_drift_job(env["state"], "recent", timedelta(minutes=5))
    _past_drift_job(env["state"], "old", timedelta(hours=2))
    service = TrainerService.open(ServiceSettings(registry=env["registry"], policies=str(env["policies"]),
                                                  state_dir=str(env["state"]), trigger_interval_s=3600))
    with ServerThread(create_app(service)) as srv:
        yield srv.url


def _retrain(url: str, model: str, key: str, kind: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/retrain", json={"model": model, "idempotency_key": key, "reason": "test",
                                                  "trigger": {"kind": kind, "psi": 0.5}}, timeout=10)


def test_drift_and_shadow_triggers_start_one_job_per_model_per_interval(url: str) -> None:
    for kind in ("drift", "shadow"):
        limited = _retrain(url, "recent", f"new-{kind}", kind)
        assert limited.status_code == 429, limited.text
        assert "one job per 3600 s per model" in limited.json()["error"]
        assert 3000 < int(limited.headers["retry-after"]) <= 3600
    assert _retrain(url, "recent", "recent-past", "drift").json()["duplicate"]  # a retry of the past trigger
    assert _retrain(url, "old", "old-new", "drift").json()["created"]  # that model's last one is 2 h old
    assert _retrain(url, "recent", "by-hand", "manual").json()["created"]  # people are not rate-limited
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'inferloop_trainer_retrain_requests_total{model="recent",outcome="rate_limited",trigger="drift"} 1.0' \
        in metrics


def test_a_body_nested_a_thousand_deep_is_400(url: str) -> None:
    body = b'{"model": "recent", "trigger": {"kind": "api", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    r = httpx.post(f"{url}/v1/retrain", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]


def test_off_loopback_the_service_will_not_start_without_its_token(env: dict[str, Any]) -> None:
    """Checked before any port is bound: one line, exit 2."""
    child_env = {k: v for k, v in os.environ.items() if k != "INFERLOOP_TRAINER_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "inferloop.cli", "trainer", "serve", "--registry", env["registry"],
                          "--policies", str(env["policies"]), "--state-dir", str(env["state"]), "--host", "0.0.0.0",
                          "--port", "0"], capture_output=True, text=True, timeout=120, env=child_env)
    assert out.returncode == 2, out.stderr
    assert "INFERLOOP_TRAINER_TOKEN" in out.stderr and "Traceback" not in out.stderr
