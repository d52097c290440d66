"""Trigger adapters against a real local HTTP receiver that checks each documented request shape
and authentication header; retries with backoff while the target is down."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from inferloop.gateway.drift.trigger import TriggerPayload, deliver
from inferloop.policy import TriggerPolicy

from .conftest import free_port

PAYLOAD = TriggerPayload(model="churn", reason="psi 0.31 on tenure", idempotency_key="drift-abc",
                         snapshot={"max_psi": 0.31, "reference_version": 3})


class Receiver:
    def __init__(self, statuses: list[int] | None = None, port: int | None = None) -> None:
        self.requests: list[dict] = []
        self.statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                status = outer.statuses.pop(0) if outer.statuses else 202
                data = json.dumps({"job_id": "job-1"}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _send(policy: TriggerPolicy, **kw):
    async def go():
        async with httpx.AsyncClient(timeout=5) as client:
            return await deliver(client, policy, PAYLOAD, initial_backoff=0.01, **kw)
    return asyncio.run(go())


def test_trainer_retrain_request_shape(monkeypatch) -> None:
    rx = Receiver()
    monkeypatch.setenv("TRAINER_TOKEN", "s3cret")
    out = _send(TriggerPolicy(action="retrain", url=rx.url, token_env="TRAINER_TOKEN"))
    rx.close()
    assert out.ok and out.job_id == "job-1"
    req = rx.requests[0]
    assert req["path"] == "/v1/retrain" and req["headers"]["Authorization"] == "Bearer s3cret"
    assert req["body"]["model"] == "churn" and req["body"]["idempotency_key"] == "drift-abc"
    assert req["body"]["trigger"]["kind"] == "drift" and req["body"]["trigger"]["max_psi"] == 0.31


def test_airflow_dag_run_shape_basic_auth_and_duplicate(monkeypatch) -> None:
    rx = Receiver(statuses=[200, 409])
    monkeypatch.setenv("AIRFLOW_USERNAME", "ops")
    monkeypatch.setenv("AIRFLOW_PASSWORD", "pw")
    policy = TriggerPolicy(action="airflow", url=rx.url, pipeline="churn_training")
    first, second = _send(policy), _send(policy)
    rx.close()
    assert first.ok and second.ok and "already" in second.detail
    req = rx.requests[0]
    assert req["path"] == "/api/v1/dags/churn_training/dagRuns"
    assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(b"ops:pw").decode()
    assert req["body"]["dag_run_id"] == "drift-abc" and req["body"]["conf"]["model"] == "churn"


def test_github_workflow_dispatch_and_repository_dispatch(monkeypatch) -> None:
    rx = Receiver(statuses=[204, 204])
    monkeypatch.setenv("GH_TOKEN", "ghp_x")
    wf = _send(TriggerPolicy(action="github", url=rx.url, repository="acme/models", pipeline="model-ci.yml",
                             token_env="GH_TOKEN"))
    rd = _send(TriggerPolicy(action="github", url=rx.url, repository="acme/models", token_env="GH_TOKEN"))
    rx.close()
    assert wf.ok and rd.ok
    a, b = rx.requests
    assert a["path"] == "/repos/acme/models/actions/workflows/model-ci.yml/dispatches"
    assert a["body"]["ref"] == "main" and a["body"]["inputs"]["idempotency_key"] == "drift-abc"
    assert b["path"] == "/repos/acme/models/dispatches" and b["body"]["event_type"] == "inferloop-retrain"
    for r in (a, b):
        assert r["headers"]["Authorization"] == "Bearer ghp_x"
        assert r["headers"]["Accept"] == "application/vnd.github+json"
        assert r["headers"]["X-GitHub-Api-Version"] == "2022-11-28"


def test_webhook_carries_idempotency_key_header() -> None:
    rx = Receiver()
    assert _send(TriggerPolicy(action="webhook", url=rx.url + "/hook")).ok
    rx.close()
    assert rx.requests[0]["path"] == "/hook" and rx.requests[0]["headers"]["Idempotency-Key"] == "drift-abc"


def test_retries_with_backoff_on_5xx_then_succeeds() -> None:
    rx = Receiver(statuses=[503, 502, 202])
    out = _send(TriggerPolicy(action="webhook", url=rx.url))
    rx.close()
    assert out.ok and out.attempts == 3 and len(rx.requests) == 3


def test_retries_while_target_is_down_then_delivers_once() -> None:
    port = free_port()
    started: list[Receiver] = []
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 3:
            started.append(Receiver(port=port))  # the trainer comes back
        await asyncio.sleep(0)

    out = _send(TriggerPolicy(action="retrain", url=f"http://127.0.0.1:{port}"), sleep=sleep)
    started[0].close()
    assert out.ok and out.attempts == 4 and len(started[0].requests) == 1
    assert sleeps[1] > sleeps[0] and sleeps[2] > sleeps[1]  # exponential backoff


def test_permanent_4xx_is_not_retried() -> None:
    rx = Receiver(statuses=[400])
    out = _send(TriggerPolicy(action="webhook", url=rx.url))
    rx.close()
    assert not out.ok and out.attempts == 1 and len(rx.requests) == 1


@pytest.mark.parametrize("kwargs", [dict(action="airflow", url="http://x"), dict(action="github"),
                                    dict(action="webhook"), dict(url="ftp://x")])
def test_incomplete_trigger_policies_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        TriggerPolicy(**kwargs)
