"""The retraining service core, without HTTP: policies, job store, job runner, scheduler, metrics.

`trainer.app` only translates HTTP to these calls. `TrainerService.open` does everything that can fail
on bad configuration (policies, state directory, registry) before a port is bound, so a bad start is
one clear error; `start`/`stop` are the lifespan of what runs (jobs, schedule).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferloop.policy import load_policies
from inferloop.registry import AsyncRegistry, Registry, RegistryError
from inferloop.trainer.jobs import Job, JobStore, RetrainRequest
from inferloop.trainer.runner import JobRunner, Outcome
from inferloop.trainer.schedule import Scheduler

log = logging.getLogger("inferloop.trainer")

KNOWN_TRIGGERS = frozenset({"api", "cli", "ci", "drift", "manual", "schedule", "shadow"})
# Started by live traffic, which anyone who can send inference requests shapes: rate-limited per model.
AUTOMATIC_TRIGGERS = frozenset({"drift", "shadow"})


class ServiceSettings(msgspec.Struct, frozen=True):
    registry: str
    policies: str = "policies"  # directory of policy files, one per model
    s3_endpoint: str | None = None
    host: str = "127.0.0.1"
    port: int = 8100
    state_dir: str = ".inferloop/trainer"  # job files and logs; survives restarts
    job_timeout_s: float = 3600.0
    max_parallel: int = 1  # jobs running at once over all models (still one per model)
    token: str | None = None  # when set, /v1/* needs `Authorization: Bearer <token>`; required off loopback
    trigger_interval_s: float = 600.0  # drift/shadow triggers start one job per model per interval at most (0: any)


class TriggerRateLimited(Exception):
    """An automatic trigger for a model whose last automatic job started less than the interval ago."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TrainerMetrics:
    """Prometheus metrics on a registry of their own (one per app, so tests need no global cleanup)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("inferloop_trainer_retrain_requests_total", "Retrain requests by outcome",
                                ["model", "trigger", "outcome"], registry=r)
        self.jobs = Counter("inferloop_trainer_jobs_total", "Finished jobs by final state", ["model", "state"],
                            registry=r)
        self.duration = Histogram("inferloop_trainer_job_duration_seconds", "Wall time of a job process",
                                  ["model"], registry=r,
                                  buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200))
        self.schedule_fires = Counter("inferloop_trainer_schedule_fires_total", "Cron schedule fires", ["model"],
                                      registry=r)
        self.last_success = Gauge("inferloop_trainer_last_success_timestamp_seconds",
                                  "Unix time of the model's last job that passed its gates", ["model"], registry=r)
        self.active = Gauge("inferloop_trainer_jobs_active", "Jobs queued or running", ["state"], registry=r)

    def watch(self, runner: JobRunner) -> None:
        # read at scrape time: always the store's truth, no transition can be missed
        self.active.labels("running").set_function(lambda: runner.running)
        self.active.labels("queued").set_function(lambda: runner.queued)

    def finished(self, job: Job, seconds: float | None) -> None:
        self.jobs.labels(job.model, job.state).inc()
        if seconds is not None:
            self.duration.labels(job.model).observe(seconds)
        if job.state == "succeeded":
            self.last_success.labels(job.model).set(time.time())


class TrainerService:
    def __init__(self, settings: ServiceSettings, policies: dict[str, Path], schedules: dict[str, str],
                 store: JobStore) -> None:
        self.settings = settings
        self.policies = policies
        self.store = store
        self.metrics = TrainerMetrics()
        self.runner = JobRunner(store, policies, registry=settings.registry, s3_endpoint=settings.s3_endpoint,
                                job_timeout_s=settings.job_timeout_s, max_parallel=settings.max_parallel,
                                on_finished=self.metrics.finished)
        self.metrics.watch(self.runner)
        self.scheduler = Scheduler(schedules, self.runner.submit,
                                   on_fire=lambda m: self.metrics.schedule_fires.labels(m).inc())
        self._registry: AsyncRegistry | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @classmethod
    def open(cls, settings: ServiceSettings) -> TrainerService:
        """Load every policy, check the registry answers, lock the state directory."""
        loaded = load_policies(settings.policies)
        Registry.open(settings.registry, s3_endpoint=settings.s3_endpoint).close()
        policies = {name: path.absolute() for name, (path, _) in loaded.items()}
        schedules = {name: p.training.schedule for name, (_, p) in loaded.items() if p.training.schedule}
        return cls(settings, policies, schedules, JobStore(settings.state_dir).open())

    async def start(self) -> None:
        self._registry = AsyncRegistry.open(self.settings.registry, s3_endpoint=self.settings.s3_endpoint)
        self.runner.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self.scheduler.run(), name="scheduler"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runner.stop()
        if self._registry is not None:
            await self._registry.close()
        self.store.close()

    async def submit(self, request: RetrainRequest) -> tuple[Job, Outcome]:
        trigger = request.trigger_kind if request.trigger_kind in KNOWN_TRIGGERS else "other"  # bounded labels
        try:
            self._check_trigger_rate(request)
        except TriggerRateLimited:
            self.metrics.requests.labels(request.model, trigger, "rate_limited").inc()
            raise
        job, outcome = self.runner.submit(request)
        self.metrics.requests.labels(request.model, trigger, outcome).inc()
        if outcome == "created" and self._registry is not None:
            with contextlib.suppress(RegistryError):  # the audit entry must not block the request
                await self._registry.append_event(
                    request.model, "retrain_requested", actor="trainer-service", reason=request.reason,
                    details={"job_id": job.id, "trigger": request.trigger_kind,
                             "idempotency_key": request.idempotency_key})
        return job, outcome

    def _check_trigger_rate(self, request: RetrainRequest) -> None:
        """Refuse a drift or shadow trigger that would start a job within `trigger_interval_s` of the
        model's last automatically started one. A retry of a request already seen, or one folded into
        an active job, starts nothing and passes."""
        interval = self.settings.trigger_interval_s
        if request.trigger_kind not in AUTOMATIC_TRIGGERS or interval <= 0:
            return
        store = self.store
        if (request.idempotency_key and request.idempotency_key in store.by_key) or request.model in store.active:
            return
        last = next((j for j in store.list(request.model, len(store.jobs)) if j.trigger in AUTOMATIC_TRIGGERS), None)
        if last is None:
            return
        age = (datetime.now(UTC) - datetime.fromisoformat(last.created_at)).total_seconds()
        if age < interval:
            raise TriggerRateLimited(f"{request.model}: an automatic ({last.trigger}) job started {age:.0f} s ago "
                                     f"(job {last.id}); drift and shadow triggers start at most one job per "
                                     f"{interval:g} s per model", interval - age)

    def job_view(self, job: Job, log_lines: int = 40) -> dict[str, Any]:
        return {**msgspec.to_builtins(job), "log_tail": self.store.log_tail(job.id, log_lines)}

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "models": sorted(self.policies),
            "jobs_running": self.runner.running,
            "jobs_queued": self.runner.queued,
            "next_scheduled": {m: t.astimezone(UTC).isoformat() for m, t in self.scheduler.next_fire.items()},
            "time": datetime.now(UTC).isoformat(),
        }
