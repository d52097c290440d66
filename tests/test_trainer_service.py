"""`inferloop trainer serve`: a real uvicorn server and HTTP client, real job processes, a real registry.

Idempotent requests, one job per model (coalescing), a killed or hanging job leaving the service
healthy, restart with job history intact, cron schedules, errors and metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from inferloop.registry import Registry
from inferloop.trainer.app import create_app
from inferloop.trainer.jobs import Job, JobStore, RequestRecord, RetrainRequest, new_job_id
from inferloop.trainer.pipeline import BuildSummary
from inferloop.trainer.runner import JobRunner
from inferloop.trainer.schedule import Scheduler
from inferloop.trainer.service import ServiceSettings, TrainerService

from .conftest import free_port
from .trainer_support import ServerThread, make_data, policy_dict, wait_for, write_policy

TERMINAL = {"succeeded", "gate_failed", "failed"}
FOREVER = 1_000_000  # epochs: a job that runs until it is killed


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    data = make_data(tmp_path)
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(policies / "rev.yaml", policy_dict(data))
    write_policy(policies / "slow.yaml", policy_dict(data, model="slow", epochs=FOREVER))
    return {"tmp": tmp_path, "data": data, "policies": policies, "registry": f"file://{tmp_path / 'reg'}",
            "state": tmp_path / "state"}


def _settings(env: dict[str, Any], **kwargs: Any) -> ServiceSettings:
    return ServiceSettings(registry=env["registry"], policies=str(env["policies"]), state_dir=str(env["state"]),
                           **kwargs)


class Client:
    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, timeout=10, headers=headers)

    def retrain(self, model: str, key: str | None = None, **body: Any) -> dict[str, Any]:
        resp = self.http.post("/v1/retrain", json={"model": model, "idempotency_key": key, **body})
        assert resp.status_code == 202, resp.text
        return resp.json()

    def job(self, job_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait(self, job_id: str, predicate, what: str, timeout: float = 90) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if predicate(job) else None

        return wait_for(ready, timeout, f"job {job_id}: {what}")

    def finished(self, job_id: str) -> dict[str, Any]:
        return self.wait(job_id, lambda j: j["state"] in TERMINAL, "did not finish")


@pytest.fixture
def server(env: dict[str, Any]) -> Iterator[Client]:
    service = TrainerService.open(_settings(env, max_parallel=2))
    with ServerThread(create_app(service)) as srv:
        yield Client(srv.url)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone too: it no longer runs
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def test_requests_are_idempotent_coalesced_per_model_and_a_killed_job_leaves_the_service_healthy(
        server: Client, env: dict[str, Any]) -> None:
    first = server.retrain("slow", "key-1", reason="drift on price")
    assert first["created"] and not first["coalesced"]
    again = server.retrain("slow", "key-1")
    assert again["job_id"] == first["job_id"] and again["duplicate"]
    other = server.retrain("slow", "key-2", reason="schedule", trigger={"kind": "drift", "psi": 0.31})
    assert other["job_id"] == first["job_id"] and other["coalesced"] and "folded into it" in other["message"]
    # another model is not held up by the first one's job
    rev = server.retrain("rev", "rev-1", reason="api")
    assert rev["created"] and rev["job_id"] != first["job_id"]

    running = server.wait(first["job_id"], lambda j: j["state"] == "running" and j["pid"], "never ran")
    assert [r["idempotency_key"] for r in running["requests"]] == ["key-1", "key-2"]
    assert running["requests"][1]["coalesced"] and running["requests"][1]["trigger"] == "drift"
    assert running["requests"][1]["trigger_details"]["psi"] == 0.31
    os.kill(running["pid"], signal.SIGKILL)  # a crashing training process
    killed = server.finished(first["job_id"])
    assert killed["state"] == "failed" and "killed by signal SIGKILL" in killed["error"]
    assert server.http.get("/healthz").json()["status"] == "ok"
    # the key still names the job it started; a new request starts a new job
    assert server.retrain("slow", "key-1")["job_id"] == first["job_id"]
    fresh = server.retrain("slow", "key-3")
    assert fresh["created"] and fresh["job_id"] != first["job_id"]

    done = server.finished(rev["job_id"])
    assert done["state"] == "succeeded", done
    assert (done["version"], done["verdict"], done["promoted"], done["exit_code"]) == (1, "passed", "staging", 0)
    assert any("epoch 3/3" in line for line in done["log_tail"])
    with Registry.open(env["registry"]) as reg:
        assert reg.get_manifest("rev", 1).artifact.digest == done["digest"]
        requested = reg.history("rev", kinds={"retrain_requested"})
        assert [e.details["job_id"] for e in requested] == [rev["job_id"]]
        assert "trainer-service" in reg.history("rev", kinds={"gate_passed"})[0].actor

    metrics = server.http.get("/metrics").text
    assert 'inferloop_trainer_retrain_requests_total{model="slow",outcome="coalesced",trigger="drift"} 1.0' in metrics
    assert 'inferloop_trainer_retrain_requests_total{model="slow",outcome="duplicate",trigger="api"} 2.0' in metrics
    assert 'inferloop_trainer_jobs_total{model="slow",state="failed"} 1.0' in metrics
    assert 'inferloop_trainer_jobs_total{model="rev",state="succeeded"} 1.0' in metrics
    assert 'inferloop_trainer_job_duration_seconds_count{model="rev"} 1.0' in metrics
    listing = server.http.get("/v1/jobs", params={"model": "slow"}).json()["jobs"]
    assert [j["id"] for j in listing] == [fresh["job_id"], first["job_id"]]


def test_bad_requests_are_4xx_with_a_message(server: Client) -> None:
    http = server.http
    cases = [
        (http.post("/v1/retrain", json={"model": "nope"}), 404, "no policy for model 'nope'"),
        (http.post("/v1/retrain", json={"model": "rev", "priority": 1}), 400, "unknown field `priority`"),
        (http.post("/v1/retrain", json={"reason": "x"}), 400, "missing required field `model`"),
        (http.post("/v1/retrain", json={"model": 3}), 400, "Expected `str`, got `int`"),
        (http.post("/v1/retrain", content=b"{not json"), 400, "malformed"),
        (http.get("/v1/jobs", params={"limit": "many"}), 400, "limit must be a positive integer"),
        (http.get("/v1/jobs/20240101T000000-deadbeef"), 404, "no job"),
    ]
    for resp, status, message in cases:
        assert resp.status_code == status, resp.text
        assert message in resp.json()["error"], resp.text
    health = http.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == ["rev", "slow"] and health["jobs_running"] == 0
    # a key names one request: reusing it for another model is a conflict, not a silent duplicate
    job = server.retrain("slow", "shared-key", trigger="nightly-batch-7")
    reused = http.post("/v1/retrain", json={"model": "rev", "idempotency_key": "shared-key"})
    assert reused.status_code == 409 and f"used for model 'slow' (job {job['job_id']})" in reused.json()["error"]
    # free-form trigger names do not become label values
    assert 'inferloop_trainer_retrain_requests_total{model="slow",outcome="created",trigger="other"} 1.0' \
        in http.get("/metrics").text


def test_hanging_job_times_out_and_the_token_guards_the_api(env: dict[str, Any]) -> None:
    service = TrainerService.open(_settings(env, job_timeout_s=2.0, token="s3cret"))
    with ServerThread(create_app(service)) as srv:
        anonymous = httpx.post(f"{srv.url}/v1/retrain", json={"model": "slow"})
        assert anonymous.status_code == 401 and "bearer token" in anonymous.json()["error"]
        assert httpx.get(f"{srv.url}/healthz").status_code == 200  # probes need no token
        client = Client(srv.url, token="s3cret")
        job = client.finished(client.retrain("slow", "hang-1")["job_id"])
        assert job["state"] == "failed" and job["error"] == "timed out after 2 s: killed"
        wait_for(lambda: _gone(job["pid"]), 10, "the timed-out job's process group is still alive")
        assert client.http.get("/healthz").json()["jobs_running"] == 0


def _start_cli_server(env: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    log = open(env["tmp"] / f"serve-{port}.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferloop.cli", "trainer", "serve", "--registry", env["registry"],
         "--policies", str(env["policies"]), "--state-dir", str(env["state"]), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (env["tmp"] / f"serve-{port}.log").read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, "trainer service did not start", interval=0.2)
    return proc


def test_service_killed_mid_job_restarts_with_its_job_history(env: dict[str, Any]) -> None:
    port = free_port()
    proc = _start_cli_server(env, port)
    orphan = None
    try:
        client = Client(f"http://127.0.0.1:{port}")
        done = client.finished(client.retrain("rev", "nightly-1")["job_id"])
        assert done["state"] == "succeeded"
        hanging = client.retrain("slow", "slow-1")["job_id"]
        orphan = client.wait(hanging, lambda j: j["state"] == "running" and j["pid"], "never ran")["pid"]
        proc.send_signal(signal.SIGKILL)  # the service dies; its job process is left behind
        proc.wait(10)
        assert not _gone(orphan)
        proc = _start_cli_server(env, port)
        client = Client(f"http://127.0.0.1:{port}")
        assert client.job(done["id"]) == {**done, "log_tail": client.job(done["id"])["log_tail"]}
        assert client.job(done["id"])["version"] == 1
        replay = client.retrain("rev", "nightly-1")
        assert replay["duplicate"] and replay["job_id"] == done["id"]
        interrupted = client.job(hanging)
        assert interrupted["state"] == "failed" and interrupted["error"].startswith("interrupted")
        wait_for(lambda: _gone(orphan), 10, "the orphaned job process was not stopped")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if orphan is not None and not _gone(orphan):  # a failed assertion must not leave training running
            os.killpg(orphan, signal.SIGKILL)


def test_a_cron_schedule_fires_once_per_scheduled_time(env: dict[str, Any]) -> None:
    store = JobStore(env["state"]).open()
    try:
        runner = JobRunner(store, {"rev": env["policies"] / "rev.yaml"}, registry=env["registry"])  # not started
        start = datetime(2024, 5, 1, 2, 59, 30, tzinfo=UTC)
        scheduler = Scheduler({"rev": "0 3 * * *"}, runner.submit, start=start)
        assert scheduler.next_fire["rev"] == datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
        assert scheduler.fire_due(start + timedelta(seconds=20)) == []  # not due yet
        ((model, job, outcome),) = scheduler.fire_due(start + timedelta(seconds=31))
        assert (model, outcome, job.trigger) == ("rev", "created", "schedule")
        assert job.requests[0].idempotency_key == "schedule:rev:2024-05-01T03:00:00Z"
        assert scheduler.next_fire["rev"] == datetime(2024, 5, 2, 3, 0, tzinfo=UTC)
        assert scheduler.fire_due(start + timedelta(minutes=5)) == []  # fired once for 03:00
        # a second scheduler (a restart) evaluating the same time gets the same job, not a new one
        again = Scheduler({"rev": "0 3 * * *"}, runner.submit, start=start)
        ((_, same, outcome),) = again.fire_due(start + timedelta(seconds=45))
        assert same.id == job.id and outcome == "duplicate"
        # the next day's fire finds the first job still queued: coalesced into it
        ((_, next_day, outcome),) = scheduler.fire_due(datetime(2024, 5, 2, 3, 0, 1, tzinfo=UTC))
        assert next_day.id == job.id and outcome == "coalesced"
        assert RetrainRequest(model="rev").trigger_kind == "api"
    finally:
        store.close()


def test_the_running_service_fires_its_schedules(env: dict[str, Any]) -> None:
    write_policy(env["policies"] / "cron.yaml", policy_dict(env["data"], model="cron", epochs=1,
                                                             schedule="* * * * * *"))  # every second
    service = TrainerService.open(_settings(env))
    with ServerThread(create_app(service)) as srv:
        client = Client(srv.url)
        assert "cron" in client.http.get("/healthz").json()["next_scheduled"]
        jobs = wait_for(lambda: client.http.get("/v1/jobs", params={"model": "cron"}).json()["jobs"], 30,
                        "the schedule never fired")
        request = jobs[0]["requests"][0]
        assert request["trigger"] == "schedule" and request["idempotency_key"].startswith("schedule:cron:")
        assert 'inferloop_trainer_schedule_fires_total{model="cron"}' in client.http.get("/metrics").text


def test_a_job_that_finished_while_the_service_was_down_is_recorded_from_its_summary(env: dict[str, Any]) -> None:
    store = JobStore(env["state"]).open()
    try:
        done = Job(id=new_job_id(), model="rev", state="running", created_at="2024-05-01T00:00:00Z",
                   policy=str(env["policies"] / "rev.yaml"), requests=[RequestRecord.of(RetrainRequest("rev"))],
                   pid=2**22 + 1)  # no such process
        lost = msgspec.structs.replace(done, id=new_job_id(), model="slow")
        store.save(done)
        store.save(lost)
        summary = BuildSummary(model="rev", mode="build", exit_code=1, version=7, digest="d" * 64, verdict="failed")
        store.summary_path(done.id).write_bytes(msgspec.json.encode(summary))

        async def start() -> None:
            JobRunner(store, {}, registry=env["registry"]).start()

        asyncio.run(start())
        assert (done.state, done.version, done.verdict, done.exit_code) == ("gate_failed", 7, "failed", 1)
        assert lost.state == "failed" and lost.error.startswith("interrupted")
        assert not store.active  # neither blocks its model any more
    finally:
        store.close()


def test_one_service_per_state_directory(env: dict[str, Any]) -> None:
    first = TrainerService.open(_settings(env))
    try:
        with pytest.raises(Exception, match="in use by another trainer service"):
            TrainerService.open(_settings(env))
    finally:
        first.store.close()
