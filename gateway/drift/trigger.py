"""What a drift trip calls: the trainer, an Airflow DAG, a GitHub Actions workflow, or a webhook.

Every adapter sends the same idempotency key (derived by `DriftMonitor.idempotency_key`), so N
replicas that see the same drift start one job where the target can deduplicate (trainer: the key;
Airflow: the key as `dag_run_id`, a duplicate is a 409 we treat as done; webhook: the
`Idempotency-Key` header). GitHub dispatches cannot be deduplicated by GitHub; the key travels in the
payload for the workflow to use as a concurrency group.

`deliver` retries with exponential backoff and jitter while the target is down (connection errors,
5xx, 429) and gives up at once on other 4xx, which retrying cannot fix.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec

from inferloop.policy import TriggerPolicy

log = logging.getLogger("inferloop.drift")


class TriggerPayload(msgspec.Struct, frozen=True):
    model: str
    reason: str
    idempotency_key: str
    snapshot: dict[str, Any]  # PSI per feature, counts, edges digest, window bounds, reference version


class TriggerOutcome(msgspec.Struct, frozen=True):
    ok: bool
    status: int | None
    attempts: int
    job_id: str | None = None
    detail: str = ""


class PermanentFailure(Exception):
    pass


def _bearer(policy: TriggerPolicy) -> dict[str, str]:
    if policy.token_env and os.environ.get(policy.token_env):
        return {"Authorization": f"Bearer {os.environ[policy.token_env]}"}
    return {}


def build_request(policy: TriggerPolicy, payload: TriggerPayload) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, JSON body) in the shape each target documents."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": payload.idempotency_key}
    if policy.action == "retrain":
        base = policy.url or os.environ.get("INFERLOOP_TRAINER_URL") or "http://127.0.0.1:8100"
        body = {"model": payload.model, "reason": payload.reason, "idempotency_key": payload.idempotency_key,
                "trigger": {"kind": "drift", **payload.snapshot}}
        return f"{base.rstrip('/')}/v1/retrain", {**headers, **_bearer(policy)}, body
    if policy.action == "airflow":
        # Airflow's stable REST API: POST /api/v1/dags/{dag_id}/dagRuns; basic auth from
        # AIRFLOW_USERNAME / AIRFLOW_PASSWORD when no bearer token is configured.
        auth = _bearer(policy)
        user, password = os.environ.get("AIRFLOW_USERNAME"), os.environ.get("AIRFLOW_PASSWORD")
        if not auth and user and password:
            auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        body = {"dag_run_id": payload.idempotency_key,
                "conf": {"model": payload.model, "reason": payload.reason, "snapshot": payload.snapshot}}
        url = f"{(policy.url or '').rstrip('/')}/api/v1/dags/{policy.pipeline}/dagRuns"
        return url, {**headers, **auth}, body
    if policy.action == "github":
        api = (policy.url or "https://api.github.com").rstrip("/")
        gh = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28", **_bearer(policy)}
        if policy.pipeline:  # a workflow file name or id: workflow_dispatch
            body = {"ref": os.environ.get("INFERLOOP_GITHUB_REF", "main"),
                    "inputs": {"model": payload.model, "reason": payload.reason[:1000],
                               "idempotency_key": payload.idempotency_key}}
            return f"{api}/repos/{policy.repository}/actions/workflows/{policy.pipeline}/dispatches", gh, body
        body = {"event_type": policy.event_type,
                "client_payload": {"model": payload.model, "reason": payload.reason[:1000],
                                   "idempotency_key": payload.idempotency_key}}
        return f"{api}/repos/{policy.repository}/dispatches", gh, body
    body = {"model": payload.model, "reason": payload.reason, "idempotency_key": payload.idempotency_key,
            "snapshot": payload.snapshot}
    return str(policy.url), {**headers, **_bearer(policy)}, body


async def send_once(client: httpx.AsyncClient, policy: TriggerPolicy, payload: TriggerPayload) -> TriggerOutcome:
    url, headers, body = build_request(policy, payload)
    resp = await client.post(url, headers=headers, content=msgspec.json.encode(body))
    if resp.status_code == 409 and policy.action in ("airflow", "retrain"):
        return TriggerOutcome(True, 409, 1, detail="already triggered (duplicate idempotency key)")
    if resp.status_code >= 500 or resp.status_code == 429:
        raise httpx.HTTPStatusError(f"{resp.status_code} from {url}", request=resp.request, response=resp)
    if resp.status_code >= 400:
        raise PermanentFailure(f"{resp.status_code} from {url}: {resp.text[:300]}")
    job_id = None
    if resp.content and resp.headers.get("content-type", "").startswith("application/json"):
        try:
            data = resp.json()
            job_id = data.get("job_id") or data.get("dag_run_id") if isinstance(data, dict) else None
        except ValueError:
            pass
    return TriggerOutcome(True, resp.status_code, 1, job_id=job_id)


async def deliver(client: httpx.AsyncClient, policy: TriggerPolicy, payload: TriggerPayload, *,
                  initial_backoff: float = 1.0, max_backoff: float = 60.0, max_elapsed: float = 1800.0,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> TriggerOutcome:
    """Send with retries; returns when delivered, on a permanent failure, or after `max_elapsed`."""
    started = time.monotonic()
    backoff = initial_backoff
    attempt = 0
    last_logged = 0.0
    while True:
        attempt += 1
        try:
            outcome = await send_once(client, policy, payload)
            return msgspec.structs.replace(outcome, attempts=attempt)
        except PermanentFailure as exc:
            log.error("drift trigger for %s refused: %s", payload.model, exc)
            return TriggerOutcome(False, None, attempt, detail=str(exc))
        except (httpx.HTTPError, OSError) as exc:
            now = time.monotonic()
            if now - started >= max_elapsed:
                return TriggerOutcome(False, None, attempt, detail=f"gave up after {attempt} attempts: {exc}")
            if now - last_logged >= max(backoff, 30.0) or attempt == 1:
                last_logged = now
                log.warning("drift trigger for %s failed (attempt %d), retrying in %.1fs: %s",
                            payload.model, attempt, backoff, exc)
            await sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, max_backoff)
