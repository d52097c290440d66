"""The small async object-store interface both backends implement.

Keys are '/'-separated relative paths built by `registry.layout`; the store never interprets them.
Every write is conditional: create-only, or replace-if-ETag-matches. Nothing is deleted.
"""

from __future__ import annotations

from typing import Protocol

import msgspec


class StoredObject(msgspec.Struct, frozen=True):
    data: bytes
    etag: str


class ObjectStore(Protocol):
    uri: str

    async def get(self, key: str) -> StoredObject:
        """Return the object; `NotFound` if absent."""

    async def get_if_changed(self, key: str, etag: str | None) -> StoredObject | None:
        """Conditional GET: None when the object still has `etag`; `NotFound` if absent."""

    async def exists(self, key: str) -> bool: ...

    async def put_if_absent(self, key: str, data: bytes) -> str:
        """Create `key`; `Conflict` if it exists. Returns the new ETag."""

    async def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Replace `key` only if its ETag is `etag` (None: only if absent); else `Conflict`."""

    async def list_children(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        """Names directly under `prefix` (which ends in '/'), sorted, after `start_after`."""

    async def check(self, create: bool = True) -> None:
        """Raise `Unavailable` if the backend cannot be used (unreachable, missing bucket). With
        `create=False` (readers) an absent registry is `NotFound` "no registry at URI", never made."""

    async def close(self) -> None: ...
