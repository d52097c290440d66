"""The prediction log: joined primary/shadow records, batched off the request path.

`PredictionLog.submit` only appends to a bounded buffer (a full buffer drops and counts: memory stays
bounded); a background task encodes JSON Lines and hands them to a sink on size or time, and
`close()` flushes what was accepted. Sinks:

- `LocalDirSink`: rolling files `<root>/<model>/<date>/<start>-<pid>.jsonl` (new file past a size),
  readable by pandas (`read_json(lines=True)`) and DuckDB (`read_json_auto`).
- `StoreSink`: one object per flush under `logs/<model>/<date>/` in any registry store (S3 or files),
  written create-only, so replicas never overwrite each other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import msgspec

from inferloop.registry.store import ObjectStore

log = logging.getLogger("inferloop.prediction_log")


class PredictionRecord(msgspec.Struct, frozen=True):
    time: float  # unix seconds
    request_id: str
    model: str
    primary_version: int | None
    primary_output: list[list[float]]  # one list per row of the request
    primary_latency_ms: float  # the forward pass of the batch the request ran in
    inputs: list[list[float]]
    mirrored: bool = False
    shadow_version: int | None = None
    shadow_output: list[list[float]] | None = None
    shadow_latency_ms: float | None = None
    shadow_error: str | None = None


class LogSink(Protocol):
    async def write(self, model: str, day: str, data: bytes) -> None: ...

    async def close(self) -> None: ...


class LocalDirSink:
    def __init__(self, root: str | os.PathLike[str], max_file_bytes: int = 64 << 20) -> None:
        self.root = Path(root)
        self.max_file_bytes = max_file_bytes
        self._current: dict[tuple[str, str], Path] = {}

    def _append(self, model: str, day: str, data: bytes) -> None:
        path = self._current.get((model, day))
        if path is None or path.stat().st_size + len(data) > self.max_file_bytes:
            directory = self.root / model / day
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{time.strftime('%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
            self._current[(model, day)] = path
        with open(path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    async def write(self, model: str, day: str, data: bytes) -> None:
        await asyncio.to_thread(self._append, model, day, data)

    async def close(self) -> None:
        return None


class StoreSink:
    def __init__(self, store: ObjectStore, prefix: str = "logs") -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    async def write(self, model: str, day: str, data: bytes) -> None:
        key = f"{self.prefix}/{model}/{day}/{time.strftime('%H%M%S')}-{uuid.uuid4().hex}.jsonl"
        await self.store.put_if_absent(key, data)

    async def close(self) -> None:
        await self.store.close()


class PredictionLog:
    """Bounded, batched, off-path writer. Use `start()` in the lifespan and `close()` on shutdown."""

    def __init__(self, sink: LogSink, *, max_pending: int = 50_000, batch_size: int = 2000,
                 flush_interval: float = 2.0, on_drop: Callable[[int], None] | None = None) -> None:
        self.sink = sink
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.on_drop = on_drop or (lambda n: None)
        self._pending: list[PredictionRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._flush_lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()
        self._last_error_log = 0.0
        self.written = 0
        self.dropped = 0

    def submit(self, record: PredictionRecord) -> bool:
        """Accept a record, or drop and count it when the buffer is full. Never blocks."""
        if len(self._pending) >= self.max_pending:
            self._drop(1)
            return False
        self._pending.append(record)
        if len(self._pending) >= self.batch_size:
            self._wake.set()
        return True

    def _drop(self, n: int) -> None:
        self.dropped += n
        self.on_drop(n)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prediction-log")

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        groups: dict[tuple[str, str], list[PredictionRecord]] = defaultdict(list)
        for r in batch:
            groups[(r.model, datetime.fromtimestamp(r.time, UTC).strftime("%Y-%m-%d"))].append(r)
        for (model, day), records in groups.items():
            data = self._encoder.encode_lines(records)
            try:
                await self.sink.write(model, day, data)
                self.written += len(records)
            except Exception as exc:  # noqa: BLE001 - a failing sink must never reach serving
                self._drop(len(records))
                now = time.monotonic()
                if now - self._last_error_log > 30:
                    self._last_error_log = now
                    log.warning("prediction log sink failed, %d records dropped: %s", len(records), exc)

    async def close(self) -> None:
        """Flush everything accepted, then stop. The writer is never cancelled mid-write."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        await self.sink.close()
