"""The audit log under racing promoters, with real processes on both backends: every pointer move
is logged exactly once (by its mover, or once by whoever finishes a killed mover's work), and in
move order, so each `promoted` event starts where the move before it left the pointer.

Before the fix (issue 20), 8 processes x 10 promotions on a file registry made 17 moves but 28
`promoted` events: the "record the move if its event is missing" recovery in other promoters ran
while the mover was still about to log its own move, so both did (RELIABILITY.md has our figures)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from inferloop.registry import Registry, layout
from inferloop.registry.manifest import Event

from .helpers import register_tiny

ROOT = Path(__file__).resolve().parent.parent
MODEL = "m"
STAGE = "production"
PROCESSES = 8

# A promoter: waits for the go file so all start together (imports take a while on 2 cores), then
# promotes its own versions in turn; prints the move ids of the moves it made. A call that finds
# the pointer already at its version moves nothing and returns the existing pointer (a move id
# this process already printed, or none of its own).
PROMOTER = textwrap.dedent("""
    import json, os, sys, time
    from inferloop.registry import Conflict, Registry
    uri, go, versions, rounds, expect = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    versions = [int(v) for v in versions.split(",")]
    moves, conflicts = [], 0
    with Registry.open(uri) as reg:
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.005)
        for i in range(rounds):
            version = versions[i % len(versions)]
            kwargs = {}
            if expect:
                seen = reg.get_pointer("m", "production")
                kwargs["expected_version"] = seen.version if seen else None
            try:
                pointer = reg.promote("m", version, "production", actor=f"p{versions[0]}", reason=f"round {i}",
                                      **kwargs)
            except Conflict:
                conflicts += 1
                continue
            if pointer.actor == f"p{versions[0]}" and pointer.move_id not in moves:
                moves.append(pointer.move_id)
    print(json.dumps({"moves": moves, "conflicts": conflicts}), flush=True)
""")


def _race(uri: str, tmp_path: Path, versions: list[int], rounds: int, expect: list[bool]) -> list[str]:
    """Run len(expect) promoters at once, each with its share of `versions` (and `expected_version`
    where `expect` says so). Returns the move ids they made."""
    go = tmp_path / f"go-{time.monotonic_ns()}"
    processes = len(expect)
    per = len(versions) // processes
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, uri, str(go),
                               ",".join(map(str, versions[per * i: per * (i + 1)])), str(rounds),
                               "1" if expect[i] else "0"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ))
             for i in range(processes)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * processes, outputs
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    moves = [m for r in results for m in r["moves"]]
    print(f"\n{uri.split(':')[0]}: {processes}x{rounds} promotions -> {len(moves)} moves, "
          f"{sum(r['conflicts'] for r in results)} conflicts")
    return moves


def _check_log(reg: Registry, made: list[str]) -> list[Event]:
    """The log holds each move once, in move order, with its `archived` right after it."""
    events = [e for e in reg.history(MODEL, limit=1_000_000) if e.kind in ("promoted", "archived")]
    promoted = [e for e in events if e.kind == "promoted"]
    logged = [e.details["move_id"] for e in promoted]
    assert len(made) == len(set(made))
    counts = Counter(logged)
    assert {m: n for m, n in counts.items() if n > 1} == {}, "moves logged more than once"
    assert counts == Counter(made), "logged moves differ from the moves made"
    # move order: each move starts where the move logged before it left the pointer
    assert [e.from_version for e in promoted] == [None] + [e.version for e in promoted[:-1]]
    # every move that replaced a version archived it once, right after the move's own event
    assert [(e.kind, e.details["move_id"]) for e in events] == [("promoted", logged[0])] + [
        (kind, move) for move in logged[1:] for kind in ("promoted", "archived")]
    pointer = reg.get_pointer(MODEL, STAGE)
    assert pointer is not None and (pointer.move_id, pointer.version) == (logged[-1], promoted[-1].version)
    assert reg.verify(MODEL) == []
    return promoted


def _versions(reg: Registry, count: int) -> list[int]:
    return [register_tiny(reg, MODEL, seed) for seed in range(1, count + 1)]


def test_racing_promoters_log_each_move_once_in_move_order(registry_uri: str, tmp_path: Path) -> None:
    """8 processes x 50 promotions of their own two versions, in one race: half of them pass
    `expected_version` (the pointer they just read), half promote unconditionally."""
    with Registry.open(registry_uri) as reg:
        versions = _versions(reg, 2 * PROCESSES)
    made = _race(registry_uri, tmp_path, versions, 50, [i % 2 == 0 for i in range(PROCESSES)])
    assert made
    with Registry.open(registry_uri) as reg:
        promoted = _check_log(reg, made)
    recovered = sum(bool(e.details.get("recovered")) for e in promoted)
    print(f"{len(promoted)} promoted events, {recovered} logged by another promoter")


def _kill_at(uri: str, point: str, version: int) -> None:
    code = ("import sys; from inferloop.registry import Registry\n"
            "with Registry.open(sys.argv[1]) as r: r.promote('m', int(sys.argv[2]), 'production', actor='killed')")
    p = subprocess.run([sys.executable, "-c", code, uri, str(version)], cwd=ROOT, timeout=120,
                       env={**os.environ, "INFERLOOP_FAILPOINT": point})
    assert p.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", ["promote.after_pointer", "promote.after_event"])
def test_killed_promoters_move_is_finished_once_by_racing_promoters(registry_uri: str, tmp_path: Path,
                                                                     point: str) -> None:
    """A promoter SIGKILLed after its compare-and-swap (no event yet) or after its `promoted`
    event (no `archived` yet); then 4 processes race to promote (half with `expected_version`):
    each that reads the pointer first finds the move unfinished, and exactly one finishes it."""
    racers = PROCESSES // 2
    with Registry.open(registry_uri) as reg:
        versions = _versions(reg, racers + 2)
        reg.promote(MODEL, versions[-1], STAGE, actor="first")
    _kill_at(registry_uri, point, versions[-2])
    with Registry.open(registry_uri) as reg:
        dead = reg.get_pointer(MODEL, STAGE)
        assert dead is not None and (dead.actor, dead.version) == ("killed", versions[-2])
        problems = reg.verify(MODEL)
        assert (point == "promote.after_pointer") == any("has no event" in p for p in problems), problems
    made = _race(registry_uri, tmp_path, versions[:racers], 5, [i % 2 == 0 for i in range(racers)])
    with Registry.open(registry_uri) as reg:
        first = reg.history(MODEL, kinds={"promoted"}, limit=1)[0]
        promoted = _check_log(reg, [first.details["move_id"], dead.move_id, *made])
        archived = [e for e in reg.history(MODEL, kinds={"archived"}) if e.details["move_id"] == dead.move_id]
    by_dead = [e for e in promoted if e.details["move_id"] == dead.move_id]
    assert [(e.actor, e.version, e.from_version) for e in by_dead] == [("killed", versions[-2], versions[-1])]
    assert bool(by_dead[0].details.get("recovered")) == (point == "promote.after_pointer")
    assert [(e.version, bool(e.details.get("recovered"))) for e in archived] == [(versions[-1], True)]


def test_pointer_from_before_log_seq_is_still_healed_once(registry_uri: str, tamper) -> None:
    """A registry written by an older inferloop: its pointer has no `log_seq` or `kind`. A move
    such a writer made and died before logging (here: the pointer written straight into storage)
    is logged once by the next promotion, and the log reads in move order."""
    with Registry.open(registry_uri) as reg:
        v1, v2, v3 = _versions(reg, 3)
        reg.promote(MODEL, v1, STAGE, actor="old")
        digest = reg.get_manifest(MODEL, v2).artifact.digest
    legacy = {"version": v2, "artifact_digest": digest, "updated_at": "2020-01-01T00:00:00.000000Z", "actor": "dead",
              "reason": "", "previous_version": v1, "move_id": "0" * 32, "history": [v1]}
    tamper.overwrite(registry_uri, layout.stage(MODEL, STAGE), json.dumps(legacy).encode())
    with Registry.open(registry_uri) as reg:
        assert any("has no event" in p for p in reg.verify(MODEL))
        reg.promote(MODEL, v3, STAGE, actor="new")
        reg.promote(MODEL, v3, STAGE, actor="again")  # already there: no move, nothing logged
        moves = [(e.actor, e.from_version, e.version, bool(e.details.get("recovered")))
                 for e in reg.history(MODEL, kinds={"promoted"})]
        assert moves == [("old", None, v1, False), ("dead", v1, v2, True), ("new", v2, v3, False)]
        assert reg.verify(MODEL) == []


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def test_mover_stalled_after_its_swap_and_the_promoter_that_logs_it_log_it_once(registry_uri: str) -> None:
    """The issue's race made deterministic: a promoter stopped (SIGSTOP) right after its
    compare-and-swap; another promoter finds the move unlogged, gives the mover its grace, then logs
    it (`recovered`) and moves on; the mover, resumed, finds its move already logged and adds
    nothing: one event per move, in move order."""
    with Registry.open(registry_uri) as reg:
        v1, v2, v3 = _versions(reg, 3)
        reg.promote(MODEL, v1, STAGE, actor="first")
    code = ("import sys; from inferloop.registry import Registry\n"
            "with Registry.open(sys.argv[1]) as r: r.promote('m', int(sys.argv[2]), 'production', actor='stalled')")
    mover = subprocess.Popen([sys.executable, "-c", code, registry_uri, str(v2)], cwd=ROOT,
                             env={**os.environ, "INFERLOOP_FAILPOINT": "promote.after_pointer:stop"})
    try:
        deadline = time.monotonic() + 120
        while not _stopped(mover.pid):
            assert mover.poll() is None and time.monotonic() < deadline, "the mover never reached its swap"
            time.sleep(0.05)
        with Registry.open(registry_uri) as reg:
            reg.promote(MODEL, v3, STAGE, actor="next")
        mover.send_signal(signal.SIGCONT)
        assert mover.wait(120) == 0
    finally:
        if mover.poll() is None:
            mover.kill()
            mover.wait()
    with Registry.open(registry_uri) as reg:
        moves = [(e.actor, e.from_version, e.version, bool(e.details.get("recovered")))
                 for e in reg.history(MODEL, kinds={"promoted"})]
        assert moves == [("first", None, v1, False), ("stalled", v1, v2, True), ("next", v2, v3, False)]
        assert [e.version for e in reg.history(MODEL, kinds={"archived"})] == [v1, v2]
        assert reg.verify(MODEL) == []
