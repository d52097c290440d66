"""The registry-wide change record: one object (`changes.json`) that every pointer move advances, so
that a gateway replica learns *what changed* with one conditional GET per interval, whatever the
number of models, and reads a pointer only when the record names it.

Writers advance it after the pointer's compare-and-swap succeeded, by compare-and-swap on the record
itself (retried on conflict), and never twice for one move (entries carry the move id): the record
never names a move that did not happen. A writer that dies between the pointer and the record leaves
a move the record does not name; whoever next logs that move (`AsyncRegistry._before_move`) records
it, and readers also read every pointer at a slow interval as a safety net. Registries written before
the record existed have none: readers fall back to reading every pointer at their poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import random

import msgspec

from inferloop.registry import layout
from inferloop.registry.errors import Conflict, CorruptArtifact, NotFound
from inferloop.registry.manifest import Change, ChangeRecord, encode
from inferloop.registry.store import ObjectStore

log = logging.getLogger("inferloop.registry")

WINDOW = 512  # newest moves kept in the record; a reader further behind re-reads every pointer
ABSENT = "absent"  # the ETag `poll_changes` reports while the registry has no record
_ATTEMPTS = 50


class ChangeState(msgspec.Struct, frozen=True):
    record: ChangeRecord | None  # None: this registry has no change record (written by an older version)
    etag: str | None


def _decode(data: bytes) -> ChangeRecord:
    try:
        return msgspec.json.decode(data, type=ChangeRecord)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptArtifact(f"malformed change record: {exc}") from None


async def record_change(store: ObjectStore, model: str, stage: str, move_id: str, version: int | None,
                        at: str) -> int | None:
    """Advance the record by this move (once per move id); its generation, or None when contention
    outlasted every attempt (logged: readers' safety-net scans still see the move)."""
    for attempt in range(_ATTEMPTS):
        try:
            obj = await store.get(layout.CHANGES)
            record, etag = _decode(obj.data), obj.etag
        except NotFound:
            record, etag = ChangeRecord(), None
        for change in reversed(record.changes):
            if change.move_id == move_id:
                return change.generation
        generation = record.generation + 1
        changes = [*record.changes, Change(generation, model, stage, move_id, version, at)][-WINDOW:]
        try:
            await store.put_if_match(layout.CHANGES, encode(ChangeRecord(generation, changes)), etag)
        except Conflict:
            await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 25)))
            continue
        return generation
    log.warning("could not advance the change record for %s %s (move %s): too much contention; replicas see "
                "the move at their next full scan", model, stage, move_id[:12])
    return None


async def poll_changes(store: ObjectStore, etag: str | None) -> ChangeState | None:
    """Conditional GET of the record: None when unchanged since `etag`."""
    try:
        obj = await store.get_if_changed(layout.CHANGES, etag)
    except NotFound:
        return None if etag == ABSENT else ChangeState(None, ABSENT)
    if obj is None:
        return None
    return ChangeState(_decode(obj.data), obj.etag)


def changed_since(record: ChangeRecord, generation: int, move_id: str) -> set[tuple[str, str]] | None:
    """(model, stage) moved after `generation`, whose entry held `move_id` when the reader last read the
    record; None when the record cannot say (that entry is gone from it, or holds another move: the
    record was recreated or restored), so the reader must read every pointer."""
    if record.generation < generation:
        return None
    seen = next((c for c in record.changes if c.generation == generation), None)
    if seen is None or seen.move_id != move_id:
        return None
    return {(c.model, c.stage) for c in record.changes if c.generation > generation}


def last_move(record: ChangeRecord) -> str:
    """The newest entry's move id: what a reader keeps with the generation, for `changed_since`."""
    return record.changes[-1].move_id if record.changes else ""
