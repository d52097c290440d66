"""Audit events the gateway writes (`swapped`, `load_failed`) without making serving wait on them.

Each write runs as a tracked task: a slow or unreachable registry delays the record, never a swap
or a response, and shutdown waits a bounded time for pending records.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from registry import RegistryError

if TYPE_CHECKING:
    from registry import AsyncRegistry

log = logging.getLogger("inferloop.gateway")


def gateway_actor() -> str:
    return f"gateway:{socket.gethostname()}:{os.getpid()}"


class EventRecorder:
    def __init__(self, registry: AsyncRegistry, actor: str | None = None) -> None:
        self.registry = registry
        self.actor = actor or gateway_actor()
        self._pending: set[asyncio.Task[None]] = set()
        self.failures = 0

    def record(self, name: str, kind: str, **fields: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._write(name, kind, fields))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, name: str, kind: str, fields: dict[str, Any]) -> None:
        try:
            await self.registry.append_event(name, kind, actor=self.actor, **fields)
        except (RegistryError, OSError) as exc:
            self.failures += 1
            log.warning("could not record %s event for %s: %s", kind, name, exc)

    async def flush(self, timeout: float = 10.0) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout)

    async def aclose(self, timeout: float = 10.0) -> None:
        await self.flush(timeout)
        for task in list(self._pending):
            task.cancel()
