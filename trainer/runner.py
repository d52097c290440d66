"""Runs retrain jobs: one at a time per model, each in its own process with a timeout.

A job is `inferloop train --policy FILE --json` in a new session (process group): a crash, a hang or
a kill of the training cannot take the service down, and a timeout or shutdown kills the whole group
(torchrun workers included). Its stderr is the job log; its stdout is the JSON build summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from inferloop.registry.core import utcnow
from inferloop.trainer.jobs import ACTIVE, Job, JobStore, RequestRecord, RetrainRequest, new_job_id
from inferloop.trainer.pipeline import EXIT_GATE_FAILED, EXIT_OK, BuildSummary

log = logging.getLogger("inferloop.trainer")

Outcome = Literal["created", "coalesced", "duplicate"]
INTERRUPTED = "interrupted: the trainer service stopped while the job ran"


class UnknownModel(LookupError):
    pass


class KeyReused(ValueError):
    """An idempotency key already used for another model's request."""


class JobRunner:
    def __init__(self, store: JobStore, policies: dict[str, Path], *, registry: str, s3_endpoint: str | None = None,
                 job_timeout_s: float = 3600.0, max_parallel: int = 1,
                 on_finished: Callable[[Job, float | None], None] | None = None) -> None:
        self.store = store
        self.policies = policies
        self.registry = registry
        self.s3_endpoint = s3_endpoint
        self.job_timeout_s = job_timeout_s
        self._slots = asyncio.Semaphore(max_parallel)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._on_finished = on_finished
        self._started = False
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover from the previous run, then run queued jobs."""
        for job in list(self.store.jobs.values()):
            if job.state != "running":
                continue
            summary = None if _kill_orphan(job) else self._read_summary(job.id)
            if summary is not None:  # it finished while the service was down: its summary says how
                self._record_exit(job, summary.exit_code, None)
            else:
                self._finish(job, "failed", error=INTERRUPTED)
        self._started = True
        for job in sorted(self.store.jobs.values(), key=lambda j: (j.created_at, j.id)):
            if job.state == "queued":
                self._spawn(job)

    async def stop(self) -> None:
        """Kill running jobs (recorded as interrupted); queued jobs stay queued for the next start."""
        self._stopping = True
        for job_id, proc in list(self._procs.items()):
            _killpg(proc.pid)
            log.warning("job %s interrupted by shutdown", job_id)
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _count(self, state: str) -> int:
        # the store's active index holds every queued or running job (one per model): count those,
        # not every job the state directory has ever recorded (this runs on each scrape and health check)
        return sum(1 for job_id in self.store.active.values() if self.store.jobs[job_id].state == state)

    @property
    def running(self) -> int:
        return self._count("running")

    @property
    def queued(self) -> int:
        return self._count("queued")

    # -- requests -------------------------------------------------------------------------------
    def submit(self, request: RetrainRequest) -> tuple[Job, Outcome]:
        """The job for this request: the key's job if seen before, else the model's active job (the
        request is coalesced into it), else a new queued job."""
        if request.idempotency_key and request.idempotency_key in self.store.by_key:
            seen = self.store.jobs[self.store.by_key[request.idempotency_key]]
            if seen.model != request.model:
                raise KeyReused(f"idempotency key {request.idempotency_key!r} was used for model {seen.model!r} "
                                f"(job {seen.id})")
            return seen, "duplicate"
        if request.model not in self.policies:
            raise UnknownModel(f"no policy for model {request.model!r} (known: {', '.join(sorted(self.policies))})")
        active_id = self.store.active.get(request.model)
        if active_id is not None:
            job = self.store.jobs[active_id]
            job.requests.append(RequestRecord.of(request, coalesced=True))
            self.store.save(job)
            return job, "coalesced"
        job = Job(id=new_job_id(), model=request.model, state="queued", created_at=utcnow(),
                  policy=str(self.policies[request.model]),
                  requests=[RequestRecord.of(request)])
        self.store.save(job)
        if self._started and not self._stopping:
            self._spawn(job)
        return job, "created"

    # -- running --------------------------------------------------------------------------------
    def _spawn(self, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        job_id = job.id

        def forget(_t: asyncio.Task[None]) -> None:
            self._tasks.pop(job_id, None)

        task.add_done_callback(forget)

    def _command(self, job: Job) -> list[str]:
        # -P: the job's working directory is never put first on sys.path, so a folder there (a user's
        # `registry/`, `trainer/` or `inferloop/`) cannot shadow our modules
        cmd = [sys.executable, "-P", "-m", "inferloop.cli", "train", "--policy", job.policy, "--registry", self.registry,
               "--json", f"--actor=trainer-service:{job.id}", f"--reason={job.reason or job.trigger}",
               f"--trigger={job.trigger}", f"--job-id={job.id}"]  # --k=v: a value may start with '-'
        return cmd + (["--s3-endpoint", self.s3_endpoint] if self.s3_endpoint else [])

    async def _run(self, job: Job) -> None:
        async with self._slots:
            if self._stopping:
                return
            job.state, job.started_at = "running", utcnow()
            started = time.monotonic()
            log_path, summary_path = self.store.log_path(job.id), self.store.summary_path(job.id)
            with open(log_path, "ab") as log_fh, open(summary_path, "wb") as out_fh:
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *self._command(job), stdout=out_fh, stderr=log_fh, start_new_session=True,
                        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"})
                except OSError as exc:
                    self._finish(job, "failed", error=f"cannot start the job process: {exc}")
                    return
                job.pid = proc.pid
                self.store.save(job)
                self._procs[job.id] = proc
                log.info("job %s (%s) started: pid %d", job.id, job.model, proc.pid)
                try:
                    code = await asyncio.wait_for(proc.wait(), self.job_timeout_s)
                except TimeoutError:
                    _killpg(proc.pid)
                    await proc.wait()
                    self._finish(job, "failed", error=f"timed out after {self.job_timeout_s:g} s: killed",
                                 seconds=time.monotonic() - started)
                    return
                except asyncio.CancelledError:  # shutdown: stop() killed the group
                    _killpg(proc.pid)
                    self._finish(job, "failed", error=INTERRUPTED)
                    raise
                finally:
                    self._procs.pop(job.id, None)
            self._record_exit(job, code, time.monotonic() - started)

    def _read_summary(self, job_id: str) -> BuildSummary | None:
        try:
            return msgspec.json.decode(self.store.summary_path(job_id).read_bytes(), type=BuildSummary)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None  # absent, empty, or cut short by a kill

    def _record_exit(self, job: Job, code: int, seconds: float | None) -> None:
        job.exit_code = code
        summary = self._read_summary(job.id)
        if summary is not None:
            job.version, job.digest, job.verdict = summary.version, summary.digest, summary.verdict
            job.promoted, job.metrics = summary.promoted, summary.metrics
        if code == EXIT_OK and summary is not None:
            self._finish(job, "succeeded", seconds=seconds)
        elif code == EXIT_GATE_FAILED and summary is not None:
            self._finish(job, "gate_failed", seconds=seconds)
        elif code < 0:
            self._finish(job, "failed", error=f"job process killed by signal {signal.Signals(-code).name}",
                         seconds=seconds)
        else:
            self._finish(job, "failed", error=self._error_line(job.id) or f"job process exited with code {code}",
                         seconds=seconds)

    def _error_line(self, job_id: str) -> str | None:
        for line in reversed(self.store.log_tail(job_id, 20)):
            if line.startswith("inferloop: error: "):
                return line[len("inferloop: error: "):]
        return None

    def _finish(self, job: Job, state: Literal["succeeded", "gate_failed", "failed"], *, error: str | None = None,
                seconds: float | None = None) -> None:
        assert state not in ACTIVE
        job.state, job.finished_at, job.error = state, utcnow(), error
        self.store.save(job)
        log.info("job %s (%s) %s%s", job.id, job.model, state, f": {error}" if error else "")
        if self._on_finished is not None:
            self._on_finished(job, seconds)


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _kill_orphan(job: Job) -> bool:
    """A job process left running by a service that died: kill it if that pid is still our job."""
    if job.pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not any(job.id.encode() in arg for arg in cmdline):
        return False  # the pid was reused by another process
    _killpg(job.pid)
    return True
