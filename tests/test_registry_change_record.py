"""The registry-wide change record (`changes.json`): every pointer move advances it once, gateway
replicas follow it with one conditional GET per interval and miss no move, and a registry without a
record (written before it existed) is still served by polling every pointer."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest

from inferloop.registry import AsyncRegistry, Conflict, Registry
from inferloop.registry.change_record import ABSENT, changed_since
from inferloop.registry.manifest import Change, ChangeRecord

from .gateway_harness import ThreadedGateway, eventually, settings_for
from .helpers import register_tiny


def _changes(uri: str) -> ChangeRecord | None:
    async def read() -> ChangeRecord | None:
        async with AsyncRegistry.open(uri) as reg:
            state = await reg.poll_changes()
            assert state is not None
            return state.record
    return asyncio.run(read())


def test_every_move_advances_the_record_once(registry_uri: str) -> None:
    assert _changes(registry_uri) is None  # nothing moved yet: no record
    with Registry.open(registry_uri) as reg:
        v1, v2 = register_tiny(reg, "a", 1), register_tiny(reg, "a", 2)
        register_tiny(reg, "b", 3)
        assert _changes(registry_uri) is None  # registering is not a move
        p1 = reg.promote("a", v1, "production")
        reg.promote("a", v1, "production")  # already there: no move, no change
        p2 = reg.promote("a", v2, "staging")
        p3 = reg.promote("b", 1, "production")
        p4 = reg.clear("a", "staging")
    record = _changes(registry_uri)
    assert record is not None and record.generation == 4
    assert [(c.generation, c.model, c.stage, c.version, c.move_id) for c in record.changes] == [
        (1, "a", "production", v1, p1.move_id), (2, "a", "staging", v2, p2.move_id),
        (3, "b", "production", 1, p3.move_id), (4, "a", "staging", None, p4.move_id)]


def test_changed_since_names_the_moves_or_asks_for_a_full_scan() -> None:
    record = ChangeRecord(7, [Change(g, f"m{g}", "production", f"id{g}", 1, "") for g in (5, 6, 7)])
    assert changed_since(record, 7, "id7") == set()
    assert changed_since(record, 5, "id5") == {("m6", "production"), ("m7", "production")}
    assert changed_since(record, 4, "id4") is None  # move 4 is no longer in the record: read every pointer
    assert changed_since(record, 9, "id9") is None  # the record went backwards (a restored bucket)
    # recreated (deleted, restored): the same generation number holds another move
    assert changed_since(record, 7, "another") is None


def test_racing_writers_never_lose_or_repeat_a_change(registry_uri: str) -> None:
    models = [f"m{i}" for i in range(6)]
    with Registry.open(registry_uri) as reg:
        for name in models:
            register_tiny(reg, name, 1)
            register_tiny(reg, name, 2)
    made: list[str] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with Registry.open(registry_uri) as reg:
            for _ in range(12):
                try:
                    pointer = reg.promote(rng.choice(models), rng.choice([1, 2]), "production")
                except Conflict:
                    continue
                with lock:
                    made.append(pointer.move_id)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = _changes(registry_uri)
    assert record is not None
    ids = [c.move_id for c in record.changes]
    assert len(ids) == len(set(ids))  # never twice
    assert set(made) <= set(ids)  # never lost (a no-op promote returns the current pointer: also recorded)
    assert [c.generation for c in record.changes] == list(range(1, record.generation + 1))


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_replicas_following_the_record_end_on_every_final_pointer(tmp_path: Path, request, backend: str) -> None:
    """Racing promotions of many models while two replicas poll only the record (the safety-net scan
    is set far beyond the test): every replica ends on every model's final production pointer."""
    if backend == "s3":
        uri = f"s3://{request.getfixturevalue('moto_server').create_bucket()}/reg"
        s3 = {"s3_endpoint": request.getfixturevalue("moto_server").endpoint}
    else:
        uri, s3 = f"file://{tmp_path / 'reg'}", {}
    models = [f"m{i}" for i in range(8)]
    with Registry.open(uri, **s3) as reg:
        for name in models:
            for seed in (1, 2, 3):
                register_tiny(reg, name, seed)
            reg.promote(name, 1, "production")
    registry = {"full_scan_interval_s": 3600.0, **s3}
    replicas = [ThreadedGateway(settings_for(uri, models, tmp_path / f"r{i}", registry=registry)) for i in range(2)]
    for gw in replicas:
        gw.__enter__()
    try:
        for gw in replicas:
            for name in models:
                gw.wait_serving(name, 1)
            assert gw.plane is not None
        feeds = [gw.app.state.change_feed for gw in replicas]
        eventually(lambda: all(f.live for f in feeds), 30, "replicas follow the record")

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            with Registry.open(uri, **s3) as w:
                for _ in range(10):
                    try:
                        w.promote(rng.choice(models), rng.choice([1, 2, 3]), "production")
                    except Conflict:
                        pass

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with Registry.open(uri, **s3) as reg:
            final = {name: reg.get_pointer(name, "production").version for name in models}
        for gw in replicas:
            for name, version in final.items():
                gw.wait_serving(name, version, timeout=60)
        assert all(f.live for f in feeds)  # followed the record the whole time, no fallback
    finally:
        for gw in replicas:
            gw.__exit__(None, None, None)


def test_a_registry_without_a_record_is_polled_pointer_by_pointer(tmp_path: Path) -> None:
    """A registry written before the record existed has no `changes.json` (its only layout difference):
    the gateway polls every pointer at its interval, and follows the record once a writer creates it."""
    uri = f"file://{tmp_path / 'reg'}"
    with Registry.open(uri) as reg:
        v1, v2, v3 = (register_tiny(reg, "m", s) for s in (1, 2, 3))
        reg.promote("m", v1, "production")
    record = tmp_path / "reg" / "changes.json"
    record.unlink()
    with ThreadedGateway(settings_for(uri, ["m"], tmp_path, registry={"full_scan_interval_s": 3600.0})) as gw:
        gw.wait_serving("m", v1)
        feed = gw.app.state.change_feed
        poller = gw.plane.models["m"].pollers["production"]
        eventually(lambda: feed.rounds >= 3, 10, "feed rounds")
        assert not feed.live and feed.etag == ABSENT and poller.interval_s == pytest.approx(0.1)
        # an older writer moves the pointer and writes no record: polled pointer by pointer, it is seen
        with Registry.open(uri) as reg:
            reg.promote("m", v2, "production")
        record.unlink()
        gw.wait_serving("m", v2)
        # a current writer creates the record: the replica follows it from then on
        with Registry.open(uri) as reg:
            reg.promote("m", v3, "production")
        gw.wait_serving("m", v3)
        eventually(lambda: feed.live, 10, "following the record")
        assert poller.interval_s == 3600.0


def test_a_file_registry_pushes_changes_through_inotify(tmp_path: Path) -> None:
    """With a 60 s poll interval, a promotion still reaches the replica well within that: the feed
    re-reads the record when a writer replaces it (inotify on the registry root), besides polling it."""
    uri = f"file://{tmp_path / 'reg'}"
    with Registry.open(uri) as reg:
        v1, v2 = (register_tiny(reg, "m", s) for s in (1, 2))
        reg.promote("m", v1, "production")
    with ThreadedGateway(settings_for(uri, ["m"], tmp_path, poll_interval=60.0, registry={"poll_jitter": 0.0})) as gw:
        gw.wait_serving("m", v1)
        feed = gw.app.state.change_feed
        eventually(lambda: feed.live, 10, "following the record")
        rounds = feed.rounds
        with Registry.open(uri) as reg:
            reg.promote("m", v2, "production")
        gw.wait_serving("m", v2, timeout=20)  # the next poll is a minute away
        assert feed.rounds > rounds


def test_a_recreated_record_is_not_taken_for_the_same_one(tmp_path: Path) -> None:
    """The record deleted and written again (a restore, an operator) restarts its generations: the
    replica that saw generation 1 and then reads another generation 1 reads every pointer, instead of
    concluding that nothing moved."""
    uri = f"file://{tmp_path / 'reg'}"
    with Registry.open(uri) as reg:
        v1, v2 = (register_tiny(reg, "m", s) for s in (1, 2))
        reg.promote("m", v1, "production")  # the record's generation 1
    registry = {"full_scan_interval_s": 3600.0, "watch": False, "poll_jitter": 0.0}
    with ThreadedGateway(settings_for(uri, ["m"], tmp_path, poll_interval=2.0, registry=registry)) as gw:
        gw.wait_serving("m", v1)
        feed = gw.app.state.change_feed
        eventually(lambda: feed.live and feed.generation == 1, 10, "following generation 1")
        (tmp_path / "reg" / "changes.json").unlink()
        with Registry.open(uri) as reg:
            reg.promote("m", v2, "production")  # a new record: generation 1 again, another move
        assert _changes(uri).generation == 1
        gw.wait_serving("m", v2)  # the next record poll sees another move at generation 1
