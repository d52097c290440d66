"""Sync facade for scripts and training code: the async core on a private event-loop thread."""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from inferloop.registry.core import AsyncRegistry
from inferloop.registry.errors import UnsupportedArtifact
from inferloop.registry.manifest import Event, StagePointer, VersionManifest
from inferloop.registry.store import DEFAULT_REGISTRY_URI
from inferloop.registry.tracking import Run

if TYPE_CHECKING:
    from inferloop.registry.runnable import Runnable

T = TypeVar("T")


class Registry:
    """Blocking API over `AsyncRegistry`. Safe to call from any thread (not from inside its own loop)."""

    def __init__(self, core: AsyncRegistry) -> None:
        self.core = core
        self.uri = core.uri
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="inferloop-registry", daemon=True)
        self._thread.start()
        self._closed = False
        atexit.register(self.close)

    @classmethod
    def open(cls, uri: str = DEFAULT_REGISTRY_URI, *, s3_endpoint: str | None = None, check: bool = True,
             create: bool = True) -> Registry:
        """`create=False` for readers: an absent registry is `NotFound` "no registry at URI" instead of
        an empty one made on the spot (a typo in the path must not look like a registry with no models)."""
        reg = cls(AsyncRegistry.open(uri, s3_endpoint=s3_endpoint))
        if check:
            try:
                reg._run(reg.core.check() if create else reg.core.store.check(create=False))
            except BaseException:
                reg.close()
                raise
        return reg

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("registry is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for closing in (self.core.close, self._loop.shutdown_default_executor):
            # the file store's reads run on the loop's default executor: join its threads here, so
            # that no thread of ours outlives the registry (they are not daemons)
            try:
                asyncio.run_coroutine_threadsafe(closing(), self._loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - closing must not raise at exit
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API ----------------------------------------------------------------------------------
    def track(self, name: str, *, actor: str = "") -> Run:
        return Run(self, name, actor=actor)

    def register_artifact(self, name: str, *args: Any, **kwargs: Any) -> tuple[VersionManifest, bool]:
        return self._run(self.core.register(name, *args, **kwargs))

    def promote(self, name: str, version: int | str, stage: str = "staging", **kwargs: Any) -> StagePointer:
        return self._run(self.core.promote(name, version, stage, **kwargs))

    def clear(self, name: str, stage: str, **kwargs: Any) -> StagePointer | None:
        return self._run(self.core.clear(name, stage, **kwargs))

    def rollback(self, name: str, stage: str = "production", **kwargs: Any) -> StagePointer:
        return self._run(self.core.rollback(name, stage, **kwargs))

    def get_manifest(self, name: str, version: int | str) -> VersionManifest:
        return self._run(self.core.get_manifest(name, version))

    def get_pointer(self, name: str, stage: str) -> StagePointer | None:
        return self._run(self.core.get_pointer(name, stage))

    def stages(self, name: str) -> dict[str, StagePointer | None]:
        return self._run(self.core.stages(name))

    def get_blob(self, digest: str) -> bytes:
        return self._run(self.core.get_blob(digest))

    def list_models(self, start_after: str = "", limit: int = 100) -> list[str]:
        return self._run(self.core.list_models(start_after, limit))

    def list_versions(self, name: str, start_after: int = 0, limit: int = 100) -> list[int]:
        return self._run(self.core.list_versions(name, start_after, limit))

    def latest_version(self, name: str) -> int:
        return self._run(self.core.latest_version(name))

    def history(self, name: str, **kwargs: Any) -> list[Event]:
        return self._run(self.core.history(name, **kwargs))

    def append_event(self, name: str, kind: str, **fields: Any) -> Event:
        return self._run(self.core.append_event(name, kind, **fields))

    def verify(self, name: str) -> list[str]:
        return self._run(self.core.verify(name))

    def load_model(self, name: str, version: int | str, device: str = "cpu") -> Any:
        """Fetch, verify and rebuild a version's torch module (no pickle, no user code): the built-in MLP,
        or a torch.export program's graph module. ONNX versions have no module: use `load_runnable`."""
        from inferloop.registry.artifact import load_module
        from inferloop.registry.exported import FORMAT as PT2
        from inferloop.registry.exported import load_program

        manifest = self.get_manifest(name, version)
        data = self.get_blob(manifest.artifact.digest)
        if manifest.artifact.format == PT2:
            return load_program(data, device)
        if manifest.artifact.spec is None:
            raise UnsupportedArtifact(f"{name} v{manifest.version} is a {manifest.artifact.format} artifact, not a "
                                      "torch module: use load_runnable")
        return load_module(data, manifest.artifact.spec, manifest.artifact.format, device)

    def load_runnable(self, name: str, version: int | str, device: str = "cpu") -> Runnable:
        """A version ready to run, whatever its format: named input arrays in, named output arrays out
        (the same code path the gateway serves with)."""
        from inferloop.registry.runnable import open_runnable

        manifest = self.get_manifest(name, version)
        return open_runnable(self.get_blob(manifest.artifact.digest), manifest.artifact, manifest.signature, device)
