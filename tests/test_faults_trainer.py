"""Faults around the retraining service, injected into real processes: `inferloop trainer serve`
killed with SIGKILL (with its job) in the middle of training and its job killed in the middle of
registration; and the gateway's drift trigger meeting a trainer that is down, then one that is
frozen (slow). Each test says what it observes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from inferloop.registry import Registry

from .conftest import free_port
from .fault_harness import Load, ServeProcess, TrainerProcess, kill_job_processes, running
from .gateway_harness import AUTH, eventually
from .helpers import register_tiny
from .trainer_support import make_data, policy_dict, write_policy

TERMINAL = {"succeeded", "gate_failed", "failed"}


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    data = make_data(tmp_path)
    policies = tmp_path / "policies"
    policies.mkdir()
    return {"tmp": tmp_path, "data": data, "policies": policies, "registry": f"file://{tmp_path / 'reg'}",
            "state": tmp_path / "state"}


def _trainer(setup: dict[str, Any], port: int, env: dict[str, str] | None = None) -> TrainerProcess:
    return TrainerProcess(setup["tmp"], port, registry=setup["registry"], policies=setup["policies"],
                          state=setup["state"], env=env)


def _retrain(trainer: TrainerProcess, model: str, key: str) -> dict[str, Any]:
    r = trainer.client.post("/v1/retrain", json={"model": model, "idempotency_key": key, "reason": "fault test"})
    assert r.status_code == 202, r.text
    return r.json()


def _job(trainer: TrainerProcess, job_id: str) -> dict[str, Any]:
    r = trainer.client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def _finished(trainer: TrainerProcess, job_id: str) -> dict[str, Any]:
    return eventually(lambda: (j := _job(trainer, job_id))["state"] in TERMINAL and j, 120, f"job {job_id} finished")


def test_trainer_killed_in_training_and_in_registration_leaves_a_consistent_registry(setup) -> None:
    """Observed: (1) the service and its job SIGKILLed mid-training: after a restart the job is
    `failed` ("interrupted") and the registry holds no version; (2) the job SIGKILLed between writing
    its manifest and indexing it (failpoint `register.after_manifest`): the job is `failed` (killed by
    SIGKILL) and `verify` is clean; (3) the retry, a new request, runs a new job that succeeds with
    the same version number — no duplicate version, one `registered` event, `verify` clean."""
    port = free_port()
    write_policy(setup["policies"] / "rev.yaml", policy_dict(setup["data"], epochs=1_000_000))
    trainer = _trainer(setup, port)
    with running(trainer):
        trainer.wait_up()
        first = _retrain(trainer, "rev", "first")["job_id"]
        pid = eventually(lambda: (j := _job(trainer, first))["state"] == "running" and
                         any("epoch" in line for line in j["log_tail"]) and j["pid"], 60, "training under way")
        trainer.kill9()  # the service ...
        kill_job_processes(setup["state"])  # ... and its training process: the machine went down
        assert trainer.proc.returncode == -signal.SIGKILL and pid
    write_policy(setup["policies"] / "rev.yaml", policy_dict(setup["data"], epochs=2))  # quick from now on
    trainer = _trainer(setup, port, env={"INFERLOOP_FAILPOINT": "register.after_manifest"})
    with running(trainer):
        trainer.wait_up()
        assert _job(trainer, first)["state"] == "failed" and _job(trainer, first)["error"].startswith("interrupted")
        second = _finished(trainer, _retrain(trainer, "rev", "second")["job_id"])
        assert second["state"] == "failed" and "SIGKILL" in second["error"], second
    with Registry.open(setup["registry"]) as reg:
        assert reg.verify("rev") == [] and reg.latest_version("rev") == 1  # the manifest made it, nothing else
        assert reg.get_pointer("rev", "staging") is None
    trainer = _trainer(setup, port)
    with running(trainer):
        trainer.wait_up()
        third = _finished(trainer, _retrain(trainer, "rev", "third")["job_id"])
        assert third["id"] not in (first, second["id"]) and third["state"] == "succeeded", third
    with Registry.open(setup["registry"]) as reg:
        assert third["version"] == 1 and reg.latest_version("rev") == 1  # no duplicate version
        assert reg.verify("rev") == []
        assert [e.version for e in reg.history("rev", kinds={"registered"})] == [1]
        assert reg.get_pointer("rev", "staging").version == 1


def _drift_policy(data: Path, model: str, trainer_url: str) -> dict[str, Any]:
    policy = policy_dict(data, model=model, epochs=1)
    policy["monitor"] = {"methods": {"psi": {"threshold": 0.2}}, "window": 200, "min_samples": 100,
                         "cooldown_s": 3600, "on_trigger": {"action": "retrain", "url": trainer_url}}
    return policy


def _delivery(gw: ServeProcess, model: str) -> dict[str, Any] | None:
    r = gw.client.get(f"/admin/models/{model}/drift", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["last_delivery"]


def test_drift_trigger_with_the_trainer_down_then_frozen(setup) -> None:
    """Observed, with one gateway serving `down` and `slow` under constant (drifted) load:
    - `down` trips while no trainer listens: delivery fails and is retried with back-off; once
      `inferloop trainer serve` is up, exactly one job exists for the trip (attempts > 1);
    - `slow` trips while that trainer is frozen (SIGSTOP: connections accepted, nothing answered):
      every prediction of both models is still answered 200 and the admin API answers; once the
      trainer runs again the request is delivered and exactly one job exists for it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Registry.open(setup["registry"]) as reg:
        for model in ("down", "slow"):
            reg.promote(model, register_tiny(reg, model, seed=1), "production")
            write_policy(setup["policies"] / f"{model}.yaml", _drift_policy(setup["data"], model, url))
    gw = ServeProcess(setup["tmp"], ["--registry", setup["registry"], "--model", "down", "--model", "slow",
                                     "--policies", str(setup["policies"]), "--cache-dir", str(setup["tmp"] / "c")])
    trainer = _trainer(setup, port)
    with running(gw, trainer):
        trainer.signal(signal.SIGSTOP)  # started, but frozen until the first phase is done
        gw.wait_ready()
        with Load(gw.url, "down", threads=2) as down:
            eventually(lambda: "drift trigger for down failed" in gw.output(), 60, "a failed delivery")
            trainer.signal(signal.SIGCONT)  # the trainer "comes back": it starts listening now
            delivered = eventually(lambda: _delivery(gw, "down"), 90, "delivery to the trainer")
        assert delivered["ok"] and delivered["attempts"] > 1, delivered
        jobs = trainer.jobs("down")
        assert len(jobs) == 1 and delivered["job_id"] == jobs[0]["id"]
        assert [r["trigger"] for r in jobs[0]["requests"]] == ["drift"]

        trainer.signal(signal.SIGSTOP)  # now slow: accepts connections, answers nothing
        with Load(gw.url, "slow", threads=2) as slow, Load(gw.url, "down", threads=1) as other:
            eventually(lambda: gw.status("slow")["ready"] and _drift_state(gw, "slow")["triggers"] == 1, 60,
                       "slow tripped")
            slow.wait_for(200)  # answered while the trigger waits on the frozen trainer
            other.wait_for(50)
            assert _delivery(gw, "slow") is None  # still waiting
            trainer.signal(signal.SIGCONT)
            delivered = eventually(lambda: _delivery(gw, "slow"), 60, "delivery to the thawed trainer")
        assert delivered["ok"], delivered
        assert len(trainer.jobs("slow")) == 1 and len(trainer.jobs("down")) == 1
    for load in (down, slow, other):
        failed = load.failed()
        assert not failed, failed[:5]
    with Registry.open(setup["registry"]) as reg:
        for model in ("down", "slow"):
            assert len(reg.history(model, kinds={"drift_detected"})) == 1


def _drift_state(gw: ServeProcess, model: str) -> dict[str, Any]:
    r = gw.client.get(f"/admin/models/{model}/drift", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()
