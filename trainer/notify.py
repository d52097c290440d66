"""Gate-failure notifications: `webhook` targets get a JSON POST, `slack` targets a message posted to
the incoming-webhook URL in INFERLOOP_SLACK_WEBHOOK_URL. A failed notification is reported, never
raised: it must not turn a gate verdict into an error."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from inferloop.policy import NotifyTarget

SLACK_URL_ENV = "INFERLOOP_SLACK_WEBHOOK_URL"
ATTEMPTS = 2


class NotifyResult(msgspec.Struct, frozen=True):
    target: str  # "webhook URL" or "slack #channel"
    ok: bool
    detail: str = ""


def _post(client: Any, url: str, body: dict[str, Any]) -> str | None:
    """POST with one retry on connection errors and 5xx; returns an error string or None."""
    import httpx

    error = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(0.5)
        try:
            resp = client.post(url, json=body)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
            continue
        if resp.status_code < 300:
            return None
        error = f"HTTP {resp.status_code}"
        if resp.status_code < 500:
            break
    return error


def send(targets: list[NotifyTarget], payload: dict[str, Any], text: str, *, timeout: float = 5.0) -> list[NotifyResult]:
    import httpx

    results = []
    slack_url = os.environ.get(SLACK_URL_ENV, "")
    with httpx.Client(timeout=timeout) as client:
        for target in targets:
            if target.webhook is not None:
                label, url, body = f"webhook {target.webhook}", target.webhook, {**payload, "text": text}
            else:
                label, url = f"slack {target.slack}", slack_url
                body = {"channel": target.slack, "text": text, "username": "inferloop"}
                if not url:
                    results.append(NotifyResult(label, False, f"{SLACK_URL_ENV} is not set"))
                    continue
            error = _post(client, url, body)
            results.append(NotifyResult(label, error is None, error or "delivered"))
    return results
