"""`ChangeFeed`: follow the registry's change record so that polling costs one conditional GET per
interval whatever the number of served models (`registry.change_record`).

While the record exists, each `StagePoller` slows to `full_scan_interval_s` (a safety net for a
writer that died between moving a pointer and advancing the record) and the feed pokes the pollers
of exactly the (model, stage) pairs the record names. Any doubt wakes every poller at once: the first
sight of the record, a gap (more moves than the record keeps), a record that went backwards. Without
a record (a registry written by an older inferloop) the pollers keep their own interval, as before.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from pathlib import Path

from inferloop.gateway.serving.file_watch import FileWatch
from inferloop.gateway.serving.poller import StagePoller
from inferloop.gateway.settings import RegistrySettings
from inferloop.registry import AsyncRegistry, RegistryError, layout
from inferloop.registry.change_record import changed_since, last_move

log = logging.getLogger("inferloop.gateway")


class ChangeFeed:
    def __init__(self, registry: AsyncRegistry, pollers: Iterable[StagePoller], settings: RegistrySettings,
                 rng: random.Random | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.pollers = {(p.stage.name, p.stage.stage): p for p in pollers}
        self._rng = rng or random.Random()
        self.etag: str | None = None
        self.generation: int | None = None  # the record's generation every poller has caught up with
        self._move_id = ""  # the move of that generation: a recreated record reuses generation numbers
        self.live = False  # the registry has a record and the pollers follow it
        self.rounds = 0
        self.pokes = 0
        self._read_at = 0.0
        self.full_scans = 0

    def _watch(self) -> FileWatch | None:
        """inotify on a file registry's root, when enabled and available: the record is re-read as soon
        as a writer replaces it (still polled at the interval, for writes inotify cannot see)."""
        root = getattr(self.registry.store, "root", None)
        if not self.settings.watch or not self.registry.uri.startswith("file://") or root is None:
            return None
        watch = FileWatch(Path(root), layout.CHANGES)
        if not watch.start():
            log.info("no inotify watch on %s: the change record is polled every %gs", root,
                     self.settings.poll_interval_s)
            return None
        return watch

    async def run(self) -> None:
        watch = self._watch()
        try:
            await self._run(watch)
        finally:
            if watch is not None:
                watch.close()

    async def _run(self, watch: FileWatch | None) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except RegistryError as exc:
                # doubt: the pollers take over at their own interval (and count, log and back off
                # while the registry is away); the next record read wakes them all and resumes
                log.debug("change record poll failed: %s", exc)
                self.etag, self.generation = None, None
                self._follow(False)
            except Exception:  # noqa: BLE001 - the feed must outlive any single bad round
                log.exception("change feed: unexpected error")
            j = self.settings.poll_jitter
            delay = self.settings.poll_interval_s * self._rng.uniform(1 - j, 1 + j)
            if watch is None:
                await asyncio.sleep(delay)
                continue
            try:
                async with asyncio.timeout(delay):
                    await watch.changed.wait()
            except TimeoutError:
                pass
            watch.changed.clear()

    async def poll_once(self) -> None:
        state = await self.registry.poll_changes(self.etag)
        # every move this record names was written to its pointer before now: a poller whose read
        # started later has seen it, only earlier readers need a poke
        self._read_at = time.monotonic()
        self.rounds += 1
        if state is None:
            return  # unchanged
        self.etag = state.etag
        record = state.record
        if record is None:
            if self.live:
                log.warning("the registry's change record disappeared: every pointer is polled again")
            self._follow(False)
            self.generation = None
            return
        changed = changed_since(record, self.generation, self._move_id) if self.generation is not None else None
        if changed is None:  # first sight, a gap, or a record that went backwards: read every pointer
            self.full_scans += 1
            self._poke(self.pollers.values())
        else:
            self._poke(p for key, p in self.pollers.items() if key in changed)
        self.generation, self._move_id = record.generation, last_move(record)
        self._follow(True)

    def _poke(self, pollers: Iterable[StagePoller], *, all_of_them: bool = False) -> None:
        for poller in pollers:
            started = poller.round_started
            if not all_of_them and (started is None or started > self._read_at):
                continue  # its first read, or its latest one, comes after the record's: nothing to catch up
            self.pokes += 1
            poller.poke()

    def _follow(self, live: bool) -> None:
        if live == self.live:
            return
        self.live = live
        interval = self.settings.full_scan_interval_s if live else self.settings.poll_interval_s
        for poller in self.pollers.values():
            poller.interval_s = max(interval, self.settings.poll_interval_s)
        if not live:  # they sleep the long interval: wake them all to poll at their own again
            self._poke(self.pollers.values(), all_of_them=True)
        if live:
            log.info("following the registry's change record: %d pointer(s) read every %gs as a safety net",
                     len(self.pollers), interval)

    def describe(self) -> dict[str, object]:
        return {"change_record": self.live, "generation": self.generation, "rounds": self.rounds,
                "full_scans": self.full_scans}
