"""The async registry core: blobs, manifests, stage pointers, audit log.

Invariants kept here:
- blobs and manifests are create-only; a version number is allocated by a create-only write of
  its manifest, so two writers never share a number and numbers stay contiguous;
- the artifact blob is written before its manifest, and a pointer is moved only to a manifest
  that exists with its blob, so a crash at any point leaves no dangling reference;
- pointers move by compare-and-swap only; events form a hash chain (each carries the digest of
  the one before it), so an edited or removed entry is detectable;
- each pointer move is logged exactly once, in move order: a mover first makes sure the move it
  replaces is logged, and every writer of a move's events (the mover, or whoever finishes a dead
  mover's work) reads the log forward from the position the pointer records and appends only at
  the end it has read, so of two writers the later one sees the earlier one's event.
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

from inferloop.registry import change_record, layout
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
from inferloop.registry.store.counting import CountingStore

POINTER_HISTORY = 100  # versions remembered per pointer for walk-back rollbacks
POINTER_ABSENT = "absent"  # the ETag `poll_pointer` reports for a pointer object that does not exist
MOVE_KINDS = ("promoted", "rolled_back", "cleared")  # events that record a pointer move
_ANY = object()
# How long to let a live mover log its own move before logging it for it (keeping its details and
# `recovered: false`); a move older than _GRACE_MAX_AGE_S is taken to be a dead writer's at once.
_MOVER_GRACE_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4)
_GRACE_MAX_AGE_S = 10.0
_MAX_LOG_STEPS = 10_000  # reads + append attempts for one move's events before giving up as contention


_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utcnow() -> str:
    return datetime.now(UTC).strftime(_TIME_FORMAT)


def _age_s(stamp: str) -> float:
    try:
        return (datetime.now(UTC) - datetime.strptime(stamp, _TIME_FORMAT).replace(tzinfo=UTC)).total_seconds()
    except ValueError:
        return float("inf")


def _v(version: int | None) -> str:
    return "empty" if version is None else f"v{version}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PointerState(msgspec.Struct, frozen=True):
    """A stage pointer as read, with the ETag a compare-and-swap or conditional GET needs."""

    pointer: StagePointer | None
    etag: str | None


class Pointer(StagePointer, frozen=True):
    """Stored pointer: the contract's fields plus the stack of earlier versions for rollback, and
    what logging the move needs if its writer dies before doing so."""

    history: list[int] = []
    # The audit log's length just before the move: the move's events all lie after this sequence
    # number, so "is it logged?" reads forward from here (None: a pointer from before this field).
    log_seq: int | None = None
    kind: str = ""  # the move's event kind (promoted, rolled_back, cleared); "" on older pointers


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
    def open(cls, uri: str, *, s3_endpoint: str | None = None,
             count_requests: Callable[[str], None] | None = None) -> AsyncRegistry:
        """`count_requests(op)` is called for every store request (get, get_if_changed, exists, ...)."""
        store = open_store(uri, s3_endpoint=s3_endpoint)
        return cls(store if count_requests is None else CountingStore(store, count_requests))

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
        warmup_inputs: dict[str, Any] | None = None,
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
                warmup=list(warmup or []), warmup_inputs=dict(warmup_inputs or {}), tags=list(tags or []),
                parent=parent, validation=validation,
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
        start = await self._before_move(name, stage, current)
        pointer = Pointer(
            version=version, artifact_digest=manifest.artifact.digest, updated_at=utcnow(), actor=actor,
            reason=reason, previous_version=current_version, move_id=uuid.uuid4().hex,
            history=history[-POINTER_HISTORY:], log_seq=start[0], kind=kind,
        )
        await self.store.put_if_match(layout.stage(name, stage), encode(pointer), etag)
        failpoint("promote.after_pointer")
        await self._record_change(name, stage, pointer)
        await self._log_move(name, stage, pointer, details=details, start=start)
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
        start = await self._before_move(name, stage, current)
        pointer = Pointer(version=None, artifact_digest="", updated_at=utcnow(), actor=actor, reason=reason,
                          previous_version=current_version, move_id=uuid.uuid4().hex,
                          history=[*current.history, current_version][-POINTER_HISTORY:], log_seq=start[0],
                          kind="cleared")
        await self.store.put_if_match(layout.stage(name, stage), encode(pointer), etag)
        await self._record_change(name, stage, pointer)
        await self._log_move(name, stage, pointer, start=start)
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

    # -- the registry-wide change record (registry.change_record) -------------------------------
    async def _record_change(self, name: str, stage: str, pointer: Pointer) -> None:
        await change_record.record_change(self.store, name, stage, pointer.move_id, pointer.version,
                                          pointer.updated_at)

    async def poll_changes(self, etag: str | None = None) -> change_record.ChangeState | None:
        """Conditional GET of the change record for pollers: None when unchanged since `etag`."""
        return await change_record.poll_changes(self.store, etag)

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

    # -- logging pointer moves exactly once, in move order --------------------------------------
    async def _before_move(self, name: str, stage: str, current: Pointer | None) -> tuple[int, str | None]:
        """Make sure the move that set `current` is logged (its writer may have died between the
        pointer and the event): logging the replaced move first is what keeps a stage's moves in
        the log in the order they happened. Returns a log position (seq, its digest if known) that
        exists now, so no event of the next move can be at or before it: that move's `log_seq`."""
        pos: tuple[int, str | None] | None = None
        if current is not None and current.move_id and current.move_id not in self._logged_moves:
            if current.log_seq is None:
                await self._log_legacy_move_if_missing(name, stage, current)
            else:
                pos = await self._log_move(name, stage, current, recovered=True)
        cached = self._event_tail.get(name)  # an event this process read or wrote, so it exists
        if cached is not None and (pos is None or cached[0] > pos[0]):
            pos = cached
        if pos is None:
            pos = (await self._last_number(lambda n: layout.event(name, n)), None)
        return pos

    def _move_events(self, stage: str, pointer: Pointer, details: dict[str, Any] | None,
                     recovered: bool) -> list[tuple[str, dict[str, Any]]]:
        """The events one move is logged as, in order: its own, then `archived` for the replaced
        production version. Each carries the move's id, the key that makes logging idempotent."""
        kind = pointer.kind or ("cleared" if pointer.version is None else "promoted")
        extra: dict[str, Any] = {"recovered": True, "moved_at": pointer.updated_at} if recovered else {}
        events = [(kind, {"actor": pointer.actor, "reason": pointer.reason, "stage": stage,
                          "version": pointer.version, "from_version": pointer.previous_version,
                          "details": {"move_id": pointer.move_id, **extra, **(details or {})}})]
        if stage == "production" and pointer.version is not None and pointer.previous_version is not None:
            events.append(("archived", {"actor": pointer.actor, "stage": stage, "version": pointer.previous_version,
                                        "reason": f"replaced by v{pointer.version} in production",
                                        "details": {"move_id": pointer.move_id, **extra}}))
        return events

    async def _log_move(self, name: str, stage: str, pointer: Pointer, *, details: dict[str, Any] | None = None,
                        recovered: bool = False, start: tuple[int, str | None] | None = None) -> tuple[int, str | None]:
        """Append the move's events unless they are already in the log; each ends up there once.
        Exactly once because nobody can log the move at or before `pointer.log_seq`, and every
        writer reads the log from there and appends only right after the last event it has read
        (a create-only write): of two writers racing, the later one reads the earlier one's event
        before it can append its own. The mover passes `start` (position `log_seq` with its digest):
        nothing after it has been read, so it may try appending right there. A `recovered` caller
        (not the mover) reads first, and gives a live mover a moment to log its own move.
        Returns the position of the move's last event."""
        assert pointer.log_seq is not None
        wanted = self._move_events(stage, pointer, details, recovered)
        needed = {kind for kind, _ in wanted}
        found: set[str] = set()
        steps = 0
        pos = start or await self._scan_move(name, pointer.move_id, (pointer.log_seq, None), found, needed)
        if recovered and not needed <= found and _age_s(pointer.updated_at) < _GRACE_MAX_AGE_S:
            for delay in _MOVER_GRACE_S:
                await asyncio.sleep(delay)
                pos = await self._scan_move(name, pointer.move_id, pos, found, needed)
                if needed <= found:
                    break
        if recovered and not needed <= found:
            # its writer died before logging it, so perhaps before advancing the change record too
            # (a move that was logged was recorded first: it is not recorded again here)
            await self._record_change(name, stage, pointer)
        for kind, fields in wanted:
            while kind not in found:
                steps += 1
                if steps > _MAX_LOG_STEPS:
                    raise Conflict(f"could not log {name} {stage} move {pointer.move_id[:12]}: too much contention")
                appended = await self._append_after(name, pos, kind, fields)
                if appended is None:  # someone appended there first: read it (and any after it)
                    pos = await self._scan_move(name, pointer.move_id, pos, found, needed)
                else:
                    pos = appended
                    found.add(kind)
                    if kind == wanted[0][0] and not recovered:
                        failpoint("promote.after_event")  # logged the move, not yet `archived`
        self._logged_moves.add(pointer.move_id)
        return pos

    async def _scan_move(self, name: str, move_id: str, pos: tuple[int, str | None], found: set[str],
                         needed: set[str]) -> tuple[int, str | None]:
        """Read events after `pos` (seq, digest of that event if known) until the log's end or until
        every kind in `needed` has been seen carrying `move_id`; adds what it sees to `found` and
        returns the position it stopped at. Reads ahead in growing batches: usually the move's
        event is the very next one, and a dead writer's gap is read quickly."""
        seq, digest = pos
        window = max(len(needed - found), 1)
        while not needed <= found:
            batch = await asyncio.gather(*(self._event_bytes(name, seq + i) for i in range(1, window + 1)))
            for raw in batch:
                if raw is None:
                    self._note_tail(name, seq, digest)
                    return seq, digest
                seq, digest = seq + 1, sha256(raw)
                if move_id.encode() in raw:  # cheap filter before decoding
                    try:
                        event = msgspec.json.decode(raw, type=Event)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # a damaged entry is `verify`'s to report
                    if event.details.get("move_id") == move_id:
                        found.add(event.kind)
                        if needed <= found:
                            break
            window = min(window * 2, 32)
        return seq, digest

    async def _event_bytes(self, name: str, seq: int) -> bytes | None:
        try:
            return (await self.store.get(layout.event(name, seq))).data
        except NotFound:
            return None

    async def _append_after(self, name: str, pos: tuple[int, str | None], kind: str,
                            fields: dict[str, Any]) -> tuple[int, str] | None:
        """Create event seq+1 chained to event `seq`; None if it already exists."""
        seq, digest = pos
        if digest is None and seq:
            cached = self._event_tail.get(name)
            if cached and cached[0] == seq:
                digest = cached[1]
            else:
                raw = await self._event_bytes(name, seq)
                if raw is None:
                    raise CorruptArtifact(f"event {seq} of {name} is missing (the log was tampered with)")
                digest = sha256(raw)
        data = encode(Event(seq=seq + 1, kind=kind, time=utcnow(), id=uuid.uuid4().hex[:12], prev_digest=digest,
                            **fields))
        try:
            await self.store.put_if_absent(layout.event(name, seq + 1), data)
        except Conflict:
            return None
        self._note_tail(name, seq + 1, sha256(data))
        return seq + 1, sha256(data)

    def _note_tail(self, name: str, seq: int, digest: str | None) -> None:
        cached = self._event_tail.get(name)
        if digest is not None and seq and (cached is None or cached[0] < seq):
            self._event_tail[name] = (seq, digest)

    async def _log_legacy_move_if_missing(self, name: str, stage: str, pointer: Pointer) -> None:
        """A pointer written before `log_seq` existed: look for its move among the recent events
        and, when it is clearly missing, log it from the newest event read."""
        head = 0
        oldest_seen = None
        async for event in self._recent_events(name, 32):
            head = head or event.seq
            if event.details.get("move_id") == pointer.move_id:
                return
            if event.stage == stage and event.kind in MOVE_KINDS:
                break  # an older move of this stage is logged but this one is not
            oldest_seen = event.seq
        else:
            if oldest_seen != 1:
                return  # not seen within the recent window: assume it was logged long ago
        await self._log_move(name, stage, msgspec.structs.replace(pointer, log_seq=head), recovered=True)

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

    @staticmethod
    def _check_move_event(key: str, event: Event, logged: dict[tuple[str, str], str],
                          stage_at: dict[str, int | None]) -> list[str]:
        """A move is logged once, and a stage's moves follow each other: each starts where the one
        logged before it left the stage (else the log shows moves that never happened)."""
        move_id = str(event.details.get("move_id", ""))
        if move_id:
            first = logged.setdefault((event.kind, move_id), key)
            if first != key:
                return [f"event {key} ({event.kind}): move {move_id[:12]} is already logged by event {first}"]
        if event.kind not in MOVE_KINDS or event.stage is None:
            return []
        problems = []
        if event.stage in stage_at and stage_at[event.stage] != event.from_version:
            problems.append(f"event {key} ({event.kind}): moves {event.stage} from {_v(event.from_version)}, but the "
                            f"move logged before it left {event.stage} at {_v(stage_at[event.stage])} (a move is "
                            "missing or logged out of order)")
        stage_at[event.stage] = event.version
        return problems

    async def verify(self, name: str) -> list[str]:
        """Check the event chain, every manifest and blob digest, and every pointer. Returns problems."""
        check_model_name(name)
        problems: list[str] = []
        prev_digest: str | None = None
        move_ids: set[str] = set()
        logged: dict[tuple[str, str], str] = {}  # (kind, move id) -> key of the event that logged it
        stage_at: dict[str, int | None] = {}  # stage -> version its last logged move left it at
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
                problems.extend(self._check_move_event(key, event, logged, stage_at))
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

