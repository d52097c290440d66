"""`StagePoller`: follow one stage pointer in the registry and apply it to a `ModelStage`.

Each round is one conditional GET (ETag; S3 answers 304, the file store compares a stat), so an
unchanged pointer costs almost nothing and nothing is ever listed. Rounds are `interval × (1 ±
jitter)` apart; while the registry has a change record, `ChangeFeed` stretches the interval to a
slow safety net and pokes the poller when the record names its pointer. A version that fails to load is retried with exponential back-off while the old
version keeps serving; a registry that cannot be reached only counts errors and backs off.
`poke()` starts a round at once (the admin endpoints use it after moving a pointer).

While the pointer is absent and nothing serves, each round also asks whether the model exists at
all (one HEAD/stat of its first manifest, until it does: nothing is ever deleted), so that a model
name that is not in the registry (a typo, the wrong registry) is said at start-up and answered 404,
not taken for a model whose first version is still to come.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

from inferloop.gateway.serving.dataplane import PRIMARY_STAGE
from inferloop.registry import RegistryError
from inferloop.registry.core import POINTER_ABSENT

if TYPE_CHECKING:
    from inferloop.gateway.metrics import GatewayMetrics
    from inferloop.gateway.serving.stage import ApplyOutcome, ModelStage
    from inferloop.gateway.settings import RegistrySettings
    from inferloop.registry import AsyncRegistry, StagePointer

log = logging.getLogger("inferloop.gateway")


class StagePoller:
    def __init__(self, registry: AsyncRegistry, stage: ModelStage, settings: RegistrySettings,
                 metrics: GatewayMetrics, rng: random.Random | None = None,
                 limit: asyncio.Semaphore | None = None) -> None:
        self.registry = registry
        # seconds between rounds: the poll interval, or the slow safety-net interval while a
        # `ChangeFeed` follows the registry's change record and pokes this poller when it must look
        self.interval_s = settings.poll_interval_s
        # shared by every poller of the gateway: at most that many pointer reads at once (start-up
        # with thousands of models, or a full scan, is spread out instead of a burst)
        self._limit = limit or asyncio.Semaphore(settings.max_concurrent_polls)
        self.stage = stage
        self.settings = settings
        self.metrics = metrics
        self._rng = rng or random.Random()
        self.etag: str | None = None
        self.pointer: StagePointer | None = None
        self.seen = False  # the pointer has been read at least once
        self.polls = 0  # completed rounds (a round that saw the registry)
        self.round_started: float | None = None  # monotonic time the last pointer read was sent
        self.errors = 0
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._backoff = settings.retry_initial_s
        self._error_backoff = settings.poll_interval_s
        self._wake = asyncio.Event()
        self._vanished_logged = False
        self.model_exists: bool | None = None  # None: not known yet (or the registry did not answer)

    @property
    def pointer_version(self) -> int | None:
        return self.pointer.version if self.pointer is not None else None

    def poke(self) -> None:
        self._retry_at = 0.0  # an operator asked: try now even if backing off
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()  # a poke during the round below makes the next round start at once
            try:
                delay = await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the poller must outlive any single bad round
                log.exception("poller for %s %s: unexpected error", self.stage.name, self.stage.stage)
                delay = self.settings.retry_max_s
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands as the
            # event fires (a poke), and the poller would then sleep out a whole (safety-net) interval
            # while the gateway waits for it to stop
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _interval(self) -> float:
        j = self.settings.poll_jitter
        # a model not (yet) in the registry is watched at the poll interval even while the change
        # record is followed: registering a version moves no pointer, so the record would not say
        base = self.interval_s if self.model_exists else self.settings.poll_interval_s
        return base * self._rng.uniform(1 - j, 1 + j)

    async def poll_once(self) -> float:
        """One round; returns how long to wait before the next."""
        name, stage = self.stage.name, self.stage.stage
        try:
            async with self._limit:
                self.round_started = time.monotonic()
                state = await self.registry.poll_pointer(name, stage, self.etag)
        except RegistryError as exc:
            self.errors += 1
            self.metrics.poll_errors.labels(name, stage).inc()
            if str(exc) != self.last_error:
                log.warning("cannot poll %s %s pointer (%s); still serving v%s", name, stage, exc,
                            self.stage.serving_version)
            self.last_error = str(exc)
            self._error_backoff = min(self._error_backoff * 2, self.settings.retry_max_s)
            return self._error_backoff
        if self.last_error is not None:
            log.info("registry reachable again for %s %s", name, stage)
        self.last_error = None
        self._error_backoff = self.settings.poll_interval_s
        self.polls += 1
        if state is not None and state.etag == POINTER_ABSENT and self.stage.serving_version is not None:
            # Nothing is ever deleted and an explicit clear writes a pointer, so a pointer that is gone
            # means the storage is not what it was (a bucket being restored, a wrong prefix): keep
            # serving what is loaded rather than unloading production.
            if not self._vanished_logged:
                log.warning("%s %s pointer is missing from the registry; still serving v%s", name, stage,
                            self.stage.serving_version)
                self._vanished_logged = True
            self.etag = None
            return self._interval()
        if state is not None:
            self._vanished_logged = False
            self.etag, self.pointer, self.seen = state.etag, state.pointer, True
            self._retry_at, self._backoff = 0.0, self.settings.retry_initial_s  # a new target: no back-off
        if self.etag == POINTER_ABSENT and self.stage.serving_version is None:
            await self._check_exists()
        elif self.pointer is not None:
            self._exists(True)
        if not self.seen or self.pointer_version == self.stage.serving_version:
            return self._interval()
        now = time.monotonic()
        if now < self._retry_at:
            return min(self._interval(), self._retry_at - now)
        outcome = await self.stage.apply(self.pointer, trigger=f"poll {self.polls}")
        return self._after(outcome)

    async def _check_exists(self) -> None:
        if self.model_exists:
            return  # versions are never deleted: once it exists, it always will
        try:
            exists = await self.registry.model_exists(self.stage.name)
        except RegistryError:
            return  # unknown this round; the next one asks again
        self._exists(exists)

    def _exists(self, exists: bool) -> None:
        if exists == self.model_exists:
            return
        name, stage = self.stage.name, self.stage.stage
        if stage != PRIMARY_STAGE:
            pass  # one line per model, from its primary poller
        elif not exists:
            log.error("model %r does not exist in the registry %s (no version registered): requests for it are "
                      "answered 404 until one is; the %s pointer is polled meanwhile", name, self.registry.uri, stage)
        elif self.model_exists is False:
            log.warning("model %r now exists in the registry (%s pointer)", name, stage)
        self.model_exists = exists

    def _after(self, outcome: ApplyOutcome) -> float:
        if outcome.failure is None:
            self._backoff = self.settings.retry_initial_s
            return self._interval()
        self._retry_at = time.monotonic() + self._backoff
        log.info("%s %s: retrying v%s in %.1fs", self.stage.name, self.stage.stage, outcome.failure.version,
                 self._backoff)
        wait = self._backoff
        self._backoff = min(self._backoff * 2, self.settings.retry_max_s)
        return min(self._interval(), wait)

    def describe(self) -> dict[str, object]:
        return {"pointer_version": self.pointer_version, "polls": self.polls, "poll_errors": self.errors,
                "last_poll_error": self.last_error, "model_exists": self.model_exists,
                "retry_in_s": round(max(0.0, self._retry_at - time.monotonic()), 3) if self._retry_at else None}
