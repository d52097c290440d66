"""The async registry core: blobs, manifests, stage pointers, audit log.

Invariants kept here:
- blobs and manifests are create-only; a version number is allocated by a create-only write of
  its manifest, so two writers never share a number and numbers stay contiguous;
- the artifact blob is written before its manifest, and a pointer is moved only to a manifest
  that exists with its blob, so a crash at any point leaves no dangling reference;
- pointers move by compare-and-swap only; events form a hash chain (each carries the digest of
  the one before it), so an edited or removed entry is detectable.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from inferloop.registry import layout
from inferloop.registry.errors import Conflict, CorruptArtifact, NotFound, RegistryError
from inferloop.registry.failpoints import failpoint
from inferloop.registry.manifest import (
    ArtifactInfo,
    Event,
    InputSignature,
    Lineage,
    ReferenceStats,
    StagePointer,
    ValidationRecord,
    VersionManifest,
    encode,
)
from inferloop.registry.names import STAGES, check_model_name, check_stage, check_version
from inferloop.registry.store import ObjectStore, open_store

POINTER_HISTORY = 100  # versions remembered per pointer for walk-back rollbacks
POINTER_ABSENT = "absent"  # the ETag `poll_pointer` reports for a pointer object that does not exist
_ANY = object()


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PointerState(msgspec.Struct, frozen=True):
    """A stage pointer as read, with the ETag a compare-and-swap or conditional GET needs."""

    pointer: StagePointer | None
    etag: str | None


class Pointer(StagePointer, frozen=True):
    """Stored pointer: the contract's fields plus the stack of earlier versions for rollback."""

    history: list[int] = []


_T = TypeVar("_T")


def _decode(data: bytes, typ: type[_T], what: str) -> _T:
    try:
        return msgspec.json.decode(data, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptArtifact(f"malformed {what}: {exc}") from None


class AsyncRegistry:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.uri = store.uri
        # Hints only (the store is the truth): last known event (seq, digest) and version per model,
        # so appends and allocations start probing where the last one ended.
        self._event_tail: dict[str, tuple[int, str]] = {}
        self._version_head: dict[str, int] = {}
        self._logged_moves: set[str] = set()  # move ids this process has logged itself

    @classmethod
    def open(cls, uri: str, *, s3_endpoint: str | None = None) -> AsyncRegistry:
        return cls(open_store(uri, s3_endpoint=s3_endpoint))

    async def check(self) -> None:
        await self.store.check()

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> AsyncRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- blobs --------------------------------------------------------------------------------
    async def put_blob(self, data: bytes) -> str:
        digest = sha256(data)
        key = layout.blob(digest)
        if not await self.store.exists(key):
            try:
                await self.store.put_if_absent(key, data)
            except Conflict:
                pass  # the same bytes were written concurrently: content addressing makes that a no-op
        return digest

    async def get_blob(self, digest: str) -> bytes:
        obj = await self.store.get(layout.blob(digest))
        actual = sha256(obj.data)
        if actual != digest:
            raise CorruptArtifact(f"blob {digest[:12]}… is corrupt: its bytes hash to {actual[:12]}… "
                                  f"({len(obj.data)} bytes); refusing to use it")
        return obj.data

    async def blob_exists(self, digest: str) -> bool:
        return await self.store.exists(layout.blob(digest))

    # -- contiguous numbered keys (versions, events) --------------------------------------------
    async def _last_number(self, key_of: Callable[[int], str], hint: int = 0) -> int:
        """Largest n with key_of(n) present, for keys created 1, 2, 3, …: O(log n) existence checks."""
        exists: Callable[[int], Awaitable[bool]] = lambda n: self.store.exists(key_of(n))  # noqa: E731
        lo = hint if hint > 0 and await exists(hint) else 0
        step = 1
        while await exists(lo + step):
            lo += step
            step *= 2
        hi = lo + step  # absent
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await exists(mid):
                lo = mid
            else:
                hi = mid
        return lo

    async def latest_version(self, name: str) -> int:
        check_model_name(name)
        latest = await self._last_number(lambda n: layout.manifest(name, n), self._version_head.get(name, 0))
        self._version_head[name] = latest
        return latest

    # -- manifests ----------------------------------------------------------------------------
    async def get_manifest(self, name: str, version: int | str) -> VersionManifest:
        version = check_version(version)
        try:
            obj = await self.store.get(layout.manifest(name, version))
        except NotFound:
            if version == 1 or not await self.store.exists(layout.manifest(name, 1)):
                raise NotFound(f"model {name!r} not found in {self.uri}") from None
            raise NotFound(f"model {name!r} has no version {version}") from None
        manifest = _decode(obj.data, VersionManifest, f"manifest {name} v{version}")
        if manifest.name != name or manifest.version != version:
            raise CorruptArtifact(f"manifest at {name} v{version} claims to be {manifest.name} v{manifest.version}")
        return manifest

    async def register(
        self,
        name: str,
        artifact: bytes,
        artifact_info: Callable[[str, int], ArtifactInfo],
        lineage: Lineage,
        signature: InputSignature,
        *,
        metrics: dict[str, float] | None = None,
        reference: ReferenceStats | None = None,
        warmup: list[list[float]] | None = None,
        tags: list[str] | None = None,
        parent: int | None = None,
        validation: ValidationRecord | None = None,
        actor: str = "",
    ) -> tuple[VersionManifest, bool]:
        """Store the artifact and a new manifest. Returns (manifest, created); an identical
        artifact with identical lineage returns the existing version with created=False."""
        check_model_name(name)
        digest = await self.put_blob(artifact)
        failpoint("register.after_blob")
        info = artifact_info(digest, len(artifact))
        identity = sha256(encode({
            "artifact": info.digest, "spec": info.spec, "code": lineage.code, "data": lineage.data,
            "params": lineage.params, "seed": lineage.seed, "world_size": lineage.world_size,
        }))
        existing, latest = await self._find_identity(name, identity, actor)
        if existing is not None:
            return existing, False
        number = latest + 1
        while True:
            manifest = VersionManifest(
                name=name, version=number, created_at=utcnow(), identity=identity, artifact=info,
                lineage=lineage, signature=signature, metrics=dict(metrics or {}), reference=reference,
                warmup=list(warmup or []), tags=list(tags or []), parent=parent, validation=validation,
            )
            try:
                await self.store.put_if_absent(layout.manifest(name, number), encode(manifest))
                self._version_head[name] = number
                break
            except Conflict:
                number += 1  # another writer took this number: try the next
        failpoint("register.after_manifest")
        if await self._index_identity(manifest):
            await self._log_registered(manifest, actor)
        return manifest, True

    async def _index_identity(self, manifest: VersionManifest) -> bool:
        """Index the manifest's identity; False when another writer indexed this very version first
        (a retry finishing a crashed registration), which then also logged its `registered` event.
        Whoever writes the index logs the event, so a version is logged once, even after a crash."""
        key = layout.identity(manifest.name, manifest.identity)
        try:
            await self.store.put_if_absent(key, encode({"version": manifest.version}))
        except Conflict:
            indexed: int = _decode((await self.store.get(key)).data, dict, "identity index")["version"]
            return indexed != manifest.version
        return True

    async def _log_registered(self, manifest: VersionManifest, actor: str, **extra: Any) -> None:
        await self.append_event(manifest.name, "registered", actor=actor, version=manifest.version,
                                details={"artifact_digest": manifest.artifact.digest, "identity": manifest.identity,
                                         "tags": manifest.tags, **extra})

    async def _find_identity(self, name: str, identity: str, actor: str) -> tuple[VersionManifest | None, int]:
        """The version registered with this identity, if any, and the latest version number."""
        try:
            obj = await self.store.get(layout.identity(name, identity))
            version = _decode(obj.data, dict, "identity index")["version"]
            return await self.get_manifest(name, version), 0
        except NotFound:
            pass
        # A writer killed between its manifest and the index leaves the newest manifest unindexed and
        # unlogged: finish its registration.
        latest = await self.latest_version(name)
        if latest:
            manifest = await self.get_manifest(name, latest)
            if manifest.identity == identity:
                if await self._index_identity(manifest):
                    await self._log_registered(manifest, actor, recovered=True)
                return manifest, latest
        return None, latest

    async def list_models(self, start_after: str = "", limit: int = 100) -> list[str]:
        return await self.store.list_children(layout.MODELS, start_after, limit)

    async def list_versions(self, name: str, start_after: int = 0, limit: int = 100) -> list[int]:
        names = await self.store.list_children(layout.versions(name), f"{start_after:08d}.json" if start_after else "",
                                               limit)
        return [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]

    async def model_exists(self, name: str) -> bool:
        return await self.store.exists(layout.manifest(name, 1))

    # -- stage pointers -----------------------------------------------------------------------
    async def _read_pointer(self, name: str, stage: str) -> tuple[Pointer | None, str | None]:
        try:
            obj = await self.store.get(layout.stage(name, stage))
        except NotFound:
            return None, None
        return _decode(obj.data, Pointer, f"{stage} pointer of {name}"), obj.etag

    async def get_pointer(self, name: str, stage: str) -> StagePointer | None:
        pointer, _ = await self._read_pointer(name, stage)
        return pointer if pointer is None or pointer.version is not None else None

    async def poll_pointer(self, name: str, stage: str, etag: str | None = None) -> PointerState | None:
        """Conditional GET for pollers: None when unchanged since `etag`; never lists."""
        try:
            obj = await self.store.get_if_changed(layout.stage(name, stage), etag)
        except NotFound:
            return None if etag == POINTER_ABSENT else PointerState(None, POINTER_ABSENT)
        if obj is None:
            return None
        pointer = _decode(obj.data, Pointer, f"{stage} pointer of {name}")
        return PointerState(pointer if pointer.version is not None else None, obj.etag)

    async def stages(self, name: str) -> dict[str, StagePointer | None]:
        check_model_name(name)
        return {s: await self.get_pointer(name, s) for s in STAGES}

    async def promote(
        self,
        name: str,
        version: int | str,
        stage: str,
        *,
        actor: str = "",
        reason: str = "",
        expected_version: Any = _ANY,
        kind: str = "promoted",
        details: dict[str, Any] | None = None,
        _history: list[int] | None = None,
    ) -> StagePointer:
        """Move `stage` to `version` by compare-and-swap. `expected_version` (an int or None for
        "no pointer yet") makes the move conditional on what the caller saw; a lost race is `Conflict`."""
        check_stage(stage)
        version = check_version(version)
        manifest, (current, etag) = await asyncio.gather(self.get_manifest(name, version),
                                                         self._read_pointer(name, stage))
        if not await self.blob_exists(manifest.artifact.digest):
            raise NotFound(f"{name} v{version}: artifact blob {manifest.artifact.digest[:12]}… is missing; "
                           "refusing to promote")
        current_version = current.version if current else None
        if expected_version is not _ANY and expected_version != current_version:
            raise Conflict(f"{name} {stage} is at version {current_version}, not {expected_version}")
        if current is not None and current_version == version:
            return current  # already there: no move, no event (current_version is an int here)
        if _history is None:
            history = list(current.history) if current else []
            if current_version is not None:
                history.append(current_version)
        else:
            history = _history
        pointer = Pointer(
            version=version, artifact_digest=manifest.artifact.digest, updated_at=utcnow(), actor=actor,
            reason=reason, previous_version=current_version, move_id=uuid.uuid4().hex,
            history=history[-POINTER_HISTORY:],
        )
        if current is not None and current.move_id:
            await self._record_move_if_missing(name, stage, current)
        await self.store.put_if_match(layout.stage(name, stage), encode(pointer), etag)
        failpoint("promote.after_pointer")
        self._logged_moves.add(pointer.move_id)
        await self.append_event(name, kind, actor=actor, reason=reason, stage=stage, version=version,
                                from_version=current_version, details={"move_id": pointer.move_id, **(details or {})})
        if stage == "production" and current_version is not None:
            await self.append_event(name, "archived", actor=actor, reason=f"replaced by v{version} in production",
                                    stage=stage, version=current_version)
        return pointer

    async def clear(self, name: str, stage: str, *, actor: str = "", reason: str = "",
                    expected_version: Any = _ANY) -> StagePointer | None:
        """Empty a stage (e.g. stop shadowing). The pointer stays, with version None; its history is kept."""
        check_stage(stage)
        current, etag = await self._read_pointer(name, stage)
        current_version = current.version if current else None
        if expected_version is not _ANY and expected_version != current_version:
            raise Conflict(f"{name} {stage} is at version {current_version}, not {expected_version}")
        if current is None or current_version is None:
            return None
        pointer = Pointer(version=None, artifact_digest="", updated_at=utcnow(), actor=actor, reason=reason,
                          previous_version=current_version, move_id=uuid.uuid4().hex,
                          history=[*current.history, current_version][-POINTER_HISTORY:])
        await self.store.put_if_match(layout.stage(name, stage), encode(pointer), etag)
        await self.append_event(name, "cleared", actor=actor, reason=reason, stage=stage,
                                from_version=current_version, details={"move_id": pointer.move_id})
        return pointer

    async def rollback(self, name: str, stage: str, *, to_version: int | str | None = None, actor: str = "",
                       reason: str = "") -> StagePointer:
        """Re-promote the version before the current one (walking back one move per call), or a named one."""
        check_stage(stage)
        current, _ = await self._read_pointer(name, stage)
        if current is None:
            raise NotFound(f"{name} has no {stage} pointer to roll back")
        history = list(current.history)
        if to_version is None:
            if not history:
                raise NotFound(f"{name} {stage} has no earlier version to roll back to")
            target = history.pop()
        else:
            target = check_version(to_version)
            if target in history:
                history = history[: len(history) - 1 - history[::-1].index(target)]
        return await self.promote(name, target, stage, actor=actor, reason=reason, expected_version=current.version,
                                  kind="rolled_back", _history=history)

    # -- audit log ----------------------------------------------------------------------------
    async def append_event(self, name: str, kind: str, **fields: Any) -> Event:
        check_model_name(name)
        for attempt in range(100):
            prev: str | None
            cached = self._event_tail.get(name)
            if cached and not await self.store.exists(layout.event(name, cached[0] + 1)):
                seq, prev = cached  # nobody appended since our last write: no need to re-read the tail
            else:
                seq = await self._last_number(lambda n: layout.event(name, n), cached[0] if cached else 0)
                prev = sha256((await self.store.get(layout.event(name, seq))).data) if seq else None
            event = Event(seq=seq + 1, kind=kind, time=utcnow(), id=uuid.uuid4().hex[:12], prev_digest=prev, **fields)
            data = encode(event)
            try:
                await self.store.put_if_absent(layout.event(name, seq + 1), data)
            except Conflict:
                self._event_tail.pop(name, None)
                await asyncio.sleep(random.uniform(0, 0.005 * min(attempt + 1, 20)))
                continue
            self._event_tail[name] = (seq + 1, sha256(data))
            return event
        raise Conflict(f"could not append a {kind} event to {name}: too much contention")

    async def _recent_events(self, name: str, count: int) -> AsyncIterator[Event]:
        """The newest `count` events, newest first, read lazily."""
        cached = self._event_tail.get(name)
        head = await self._last_number(lambda n: layout.event(name, n), cached[0] if cached else 0)
        for seq in range(head, max(head - count, 0), -1):
            yield _decode((await self.store.get(layout.event(name, seq))).data, Event, f"event {seq}")

    async def _record_move_if_missing(self, name: str, stage: str, pointer: Pointer) -> None:
        """A writer killed between moving a pointer and logging it leaves a move with no event:
        the next mover records it (from the pointer, which holds actor, reason and time)."""
        if pointer.move_id in self._logged_moves:
            return
        oldest_seen = None
        async for event in self._recent_events(name, 32):
            if event.details.get("move_id") == pointer.move_id:
                return
            if event.stage == stage and event.kind in ("promoted", "rolled_back", "cleared"):
                break  # an older move of this stage is logged but this one is not
            oldest_seen = event.seq
        else:
            if oldest_seen != 1:
                return  # not seen within the recent window: assume it was logged long ago
        await self.append_event(name, "promoted", actor=pointer.actor, reason=pointer.reason, stage=stage,
                                version=pointer.version, from_version=pointer.previous_version,
                                details={"move_id": pointer.move_id, "recovered": True,
                                         "moved_at": pointer.updated_at})
        if stage == "production" and pointer.previous_version is not None:
            await self.append_event(name, "archived", actor=pointer.actor, stage=stage,
                                    version=pointer.previous_version,
                                    reason=f"replaced by v{pointer.version} in production")

    async def history(self, name: str, *, after: int = 0, limit: int = 100,
                      kinds: set[str] | None = None) -> list[Event]:
        check_model_name(name)
        out: list[Event] = []
        start = f"{after:010d}.json" if after else ""
        while len(out) < limit:
            keys = await self.store.list_children(layout.events(name), start, 200)
            if not keys:
                break
            for key in keys:
                obj = await self.store.get(layout.events(name) + key)
                event = _decode(obj.data, Event, f"event {key}")
                if kinds is None or event.kind in kinds:
                    out.append(event)
                    if len(out) >= limit:
                        break
            start = keys[-1]
        return out

    async def verify(self, name: str) -> list[str]:
        """Check the event chain, every manifest and blob digest, and every pointer. Returns problems."""
        check_model_name(name)
        problems: list[str] = []
        prev_digest: str | None = None
        move_ids: set[str] = set()
        expected_seq = 1
        start = ""
        while True:
            keys = await self.store.list_children(layout.events(name), start, 500)
            if not keys:
                break
            for key in keys:
                raw = (await self.store.get(layout.events(name) + key)).data
                try:
                    event = _decode(raw, Event, f"event {key}")
                except CorruptArtifact as exc:
                    problems.append(str(exc))
                    prev_digest = sha256(raw)
                    expected_seq += 1
                    continue
                if event.seq != expected_seq or key != f"{event.seq:010d}.json":
                    problems.append(f"event {key}: expected sequence {expected_seq}, found {event.seq} "
                                    "(an entry was removed or renamed)")
                if event.prev_digest != prev_digest:
                    problems.append(f"event {key} ({event.kind}): chain broken, the event before it was "
                                    "edited or removed")
                prev_digest = sha256(raw)
                expected_seq = event.seq + 1
                if "move_id" in event.details:
                    move_ids.add(str(event.details["move_id"]))
            start = keys[-1]
        versions_seen = 0
        start_v = 0
        while True:
            versions = await self.list_versions(name, start_v, 500)
            if not versions:
                break
            for v in versions:
                versions_seen += 1
                try:
                    manifest = await self.get_manifest(name, v)
                    await self.get_blob(manifest.artifact.digest)
                except RegistryError as exc:
                    problems.append(f"v{v}: {exc}")
            start_v = versions[-1]
        for stage in STAGES:
            try:
                pointer, _ = await self._read_pointer(name, stage)
                if pointer is not None and pointer.move_id and pointer.move_id not in move_ids:
                    problems.append(f"{stage} pointer move to v{pointer.version} at {pointer.updated_at} has no "
                                    "event (a writer died after moving it; the next promotion records it)")
                if pointer is not None and pointer.version is not None:
                    manifest = await self.get_manifest(name, pointer.version)
                    if manifest.artifact.digest != pointer.artifact_digest:
                        problems.append(f"{stage} pointer digest differs from v{pointer.version}'s manifest")
            except RegistryError as exc:
                problems.append(f"{stage} pointer: {exc}")
        if versions_seen == 0 and expected_seq == 1:
            raise NotFound(f"model {name!r} not found in {self.uri}")
        return problems

