"""Retrain jobs and their persistent store (a state directory, one JSON file per job).

The store is the service's memory across restarts: every change to a job is written atomically
(temp file, fsync, rename) before it is acknowledged, and the indexes (by idempotency key, active job
per model) are rebuilt from the files at start. One service owns a state directory at a time (an
exclusive lock), so the in-memory indexes are the truth between writes.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from inferloop.registry.core import utcnow
from inferloop.trainer.errors import TrainerError

JobState = Literal["queued", "running", "succeeded", "gate_failed", "failed"]
ACTIVE: frozenset[str] = frozenset({"queued", "running"})


class RetrainRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of POST /v1/retrain. `trigger` is what started it (api, drift, schedule, ci, ...), or an
    object with a `kind` and any details (the gateway sends its drift snapshot that way)."""

    model: str
    reason: str = ""
    trigger: str | dict[str, Any] = "api"
    idempotency_key: str | None = None

    @property
    def trigger_kind(self) -> str:
        if isinstance(self.trigger, dict):
            return str(self.trigger.get("kind") or "api")
        return self.trigger or "api"

    @property
    def trigger_details(self) -> dict[str, Any]:
        return dict(self.trigger) if isinstance(self.trigger, dict) else {}


class RequestRecord(msgspec.Struct, frozen=True):
    """One request folded into a job: the one that created it, then any coalesced into it."""

    received_at: str
    reason: str
    trigger: str
    idempotency_key: str | None = None
    coalesced: bool = False
    trigger_details: dict[str, Any] = {}

    @classmethod
    def of(cls, request: RetrainRequest, coalesced: bool = False) -> RequestRecord:
        return cls(utcnow(), request.reason, request.trigger_kind, request.idempotency_key, coalesced,
                   request.trigger_details)


class Job(msgspec.Struct):
    id: str
    model: str
    state: JobState
    created_at: str
    policy: str  # the policy file the job builds from
    requests: list[RequestRecord]
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    version: int | None = None
    digest: str | None = None
    verdict: str | None = None  # passed / failed / skipped (no validation section)
    promoted: str | None = None
    metrics: dict[str, float | None] = {}
    error: str | None = None

    @property
    def reason(self) -> str:
        return self.requests[0].reason

    @property
    def trigger(self) -> str:
        return self.requests[0].trigger


def new_job_id() -> str:
    # sortable by creation time, unique without coordination
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S.%f}-{uuid.uuid4().hex[:8]}"


class JobStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir).absolute()
        self.dir = self.root / "jobs"  # <id>.json: the job
        self.logs = self.root / "logs"  # <id>.log: its stderr; <id>.summary.json: its JSON summary
        self.jobs: dict[str, Job] = {}
        self.by_key: dict[str, str] = {}
        self.active: dict[str, str] = {}  # model -> id of its queued or running job
        self._lock_fd: int | None = None

    def open(self) -> JobStore:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.logs.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise TrainerError(f"cannot use state directory {self.root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TrainerError(f"state directory {self.root} is in use by another trainer service") from None
        self._lock_fd = fd
        for path in sorted(self.dir.glob("*.json")):
            try:
                job = msgspec.json.decode(path.read_bytes(), type=Job)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise TrainerError(f"corrupt job file {path}: {exc}") from None
            self._index(job)
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _index(self, job: Job) -> None:
        self.jobs[job.id] = job
        for r in job.requests:
            if r.idempotency_key:
                self.by_key[r.idempotency_key] = job.id
        if job.state in ACTIVE:
            self.active[job.model] = job.id
        elif self.active.get(job.model) == job.id:
            del self.active[job.model]

    def save(self, job: Job) -> None:
        """Persist, then index: what the service acknowledges is on disk."""
        path = self.dir / f"{job.id}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(msgspec.json.encode(job))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._index(job)

    def log_path(self, job_id: str) -> Path:
        return self.logs / f"{job_id}.log"

    def summary_path(self, job_id: str) -> Path:
        return self.logs / f"{job_id}.summary.json"

    def log_tail(self, job_id: str, lines: int = 40) -> list[str]:
        try:
            with open(self.log_path(job_id), encoding="utf-8", errors="replace") as fh:
                return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
        except FileNotFoundError:
            return []

    def list(self, model: str | None = None, limit: int = 50) -> list[Job]:
        jobs = [j for j in self.jobs.values() if model is None or j.model == model]
        return sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)[:limit]
