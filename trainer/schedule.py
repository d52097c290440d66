"""Cron schedules from `training.schedule`: the service fires them itself (model CI runs on
triggers, never on code commits). Times are UTC. Each fire submits a retrain request whose
idempotency key names the scheduled time, so a fire is one job however often it is evaluated, and
a fire that finds the model's job still running is coalesced into it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from croniter import croniter

from inferloop.trainer.jobs import Job, RetrainRequest

log = logging.getLogger("inferloop.trainer")

MAX_SLEEP_S = 30.0  # re-read the clock at least this often (wall-clock jumps, suspend)


class Scheduler:
    def __init__(self, schedules: dict[str, str], submit: Callable[[RetrainRequest], tuple[Job, str]],
                 start: datetime | None = None, on_fire: Callable[[str], None] | None = None) -> None:
        start = start or datetime.now(UTC)
        self.schedules = dict(schedules)
        self._submit = submit
        self._on_fire = on_fire
        self.next_fire: dict[str, datetime] = {m: self._after(m, start) for m in self.schedules}

    def _after(self, model: str, when: datetime) -> datetime:
        fire: datetime = croniter(self.schedules[model], when).get_next(datetime)  # croniter is not followed
        return fire

    def fire_due(self, now: datetime) -> list[tuple[str, Job, str]]:
        """Submit every schedule due at `now` (once per scheduled time, missed times not replayed)."""
        fired = []
        for model, due in sorted(self.next_fire.items()):
            if due > now:
                continue
            stamp = due.strftime("%Y-%m-%dT%H:%M:%SZ")
            request = RetrainRequest(model=model, reason=f"schedule {self.schedules[model]!r} at {stamp}",
                                     trigger="schedule", idempotency_key=f"schedule:{model}:{stamp}")
            job, outcome = self._submit(request)
            fired.append((model, job, outcome))
            if self._on_fire is not None:
                self._on_fire(model)
            log.info("schedule fired for %s at %s: job %s (%s)", model, stamp, job.id, outcome)
            self.next_fire[model] = self._after(model, now)
        return fired

    async def run(self) -> None:
        while self.next_fire:
            wait = (min(self.next_fire.values()) - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, MAX_SLEEP_S))
                continue
            try:
                self.fire_due(datetime.now(UTC))
            except Exception:  # a failing fire must not stop every later one
                log.exception("scheduled retrain failed to submit")
                await asyncio.sleep(1.0)
