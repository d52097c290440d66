"""`CountingStore`: an `ObjectStore` that reports each request it makes by operation name, so a
caller (the gateway's `inferloop_registry_requests_total{op}`) can see what polling costs."""

from __future__ import annotations

from collections.abc import Callable

from inferloop.registry.store.base import ObjectStore, StoredObject


class CountingStore:
    def __init__(self, inner: ObjectStore, count: Callable[[str], None]) -> None:
        self.inner = inner
        self.uri = inner.uri
        self._count = count

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # backend specifics (e.g. the file store's root) stay reachable

    async def get(self, key: str) -> StoredObject:
        self._count("get")
        return await self.inner.get(key)

    async def get_if_changed(self, key: str, etag: str | None) -> StoredObject | None:
        self._count("get_if_changed")
        return await self.inner.get_if_changed(key, etag)

    async def exists(self, key: str) -> bool:
        self._count("exists")
        return await self.inner.exists(key)

    async def put_if_absent(self, key: str, data: bytes) -> str:
        self._count("put_if_absent")
        return await self.inner.put_if_absent(key, data)

    async def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        self._count("put_if_match")
        return await self.inner.put_if_match(key, data, etag)

    async def list_children(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        self._count("list")
        return await self.inner.list_children(prefix, start_after, limit)

    async def check(self, create: bool = True) -> None:
        self._count("check")
        await self.inner.check(create)

    async def close(self) -> None:
        await self.inner.close()
