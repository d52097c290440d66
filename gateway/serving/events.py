"""Audit events the gateway writes (`swapped`, `load_failed`) without making serving wait on them.

Writes run in the background, one after another in the order they were recorded (the log is an
ordered history): a slow or unreachable registry delays the record, never a swap or a response,
and shutdown waits a bounded time for pending records.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from inferloop.registry import RegistryError

if TYPE_CHECKING:
    from inferloop.registry import AsyncRegistry

log = logging.getLogger("inferloop.gateway")


def gateway_actor() -> str:
    return f"gateway:{socket.gethostname()}:{os.getpid()}"


class EventRecorder:
    def __init__(self, registry: AsyncRegistry, actor: str | None = None) -> None:
        self.registry = registry
        self.actor = actor or gateway_actor()
        self._tail: asyncio.Task[None] | None = None  # the last write; each write waits for the one before
        self.failures = 0

    def record(self, name: str, kind: str, **fields: Any) -> None:
        self._tail = asyncio.get_running_loop().create_task(self._write(self._tail, name, kind, fields))

    async def _write(self, before: asyncio.Task[None] | None, name: str, kind: str, fields: dict[str, Any]) -> None:
        if before is not None:
            await asyncio.wait([before])
        try:
            await self.registry.append_event(name, kind, actor=self.actor, **fields)
        except (RegistryError, OSError) as exc:
            self.failures += 1
            log.warning("could not record %s event for %s: %s", kind, name, exc)

    async def flush(self, timeout: float = 10.0) -> None:
        if self._tail is not None:
            await asyncio.wait([self._tail], timeout=timeout)

    async def aclose(self, timeout: float = 10.0) -> None:
        await self.flush(timeout)
        if self._tail is not None and not self._tail.done():
            log.warning("giving up on audit events not written within %.0fs", timeout)
            self._tail.cancel()
