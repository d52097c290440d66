"""Local copies of artifact blobs, so a restart or a re-load after release does not download again.

Every read re-checks the SHA-256 (a blob's key is its digest): a damaged local copy is deleted and
fetched again from the registry, which verifies it too. File work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from inferloop.registry.names import check_digest

if TYPE_CHECKING:
    from inferloop.registry import AsyncRegistry

log = logging.getLogger("inferloop.gateway")


class BlobCache:
    def __init__(self, registry: AsyncRegistry, directory: str | None, max_bytes: int) -> None:
        self.registry = registry
        self.directory = Path(directory) if directory else None
        self.max_bytes = max_bytes
        self.hits = 0
        self.fetches = 0

    async def get(self, digest: str) -> bytes:
        check_digest(digest)
        if self.directory is not None:
            data = await asyncio.to_thread(self._read_local, digest)
            if data is not None:
                self.hits += 1
                return data
        data = await self.registry.get_blob(digest)  # verifies the digest
        self.fetches += 1
        if self.directory is not None:
            try:
                await asyncio.to_thread(self._store, digest, data)
            except OSError as exc:  # a full or read-only disk costs a re-download later, not an outage
                log.warning("could not keep blob %s… in %s: %s", digest[:12], self.directory, exc)
        return data

    def _path(self, digest: str) -> Path:
        assert self.directory is not None
        return self.directory / "sha256" / digest[:2] / digest

    def _read_local(self, digest: str) -> bytes | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            log.warning("local copy of blob %s… is damaged; deleting it and fetching again", digest[:12])
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recency for pruning
        return data

    def _store(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._prune(keep=path)

    def _prune(self, keep: Path) -> None:
        """Delete least recently used copies until the cache fits `max_bytes`."""
        assert self.directory is not None
        entries = []
        for p in (self.directory / "sha256").glob("*/*"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size
