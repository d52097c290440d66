"""Faults between the gateway and the registry, injected into real processes: an `inferloop serve`
child under client load while the S3 server dies and comes back, blobs that are truncated or gone,
a gateway killed with SIGKILL in the middle of a swap, and a CLI `promote` killed after it moved the
pointer. Each test says what it observes; "failed" always means an answer other than 200."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import boto3

from inferloop.registry import Registry
from tests.conftest import MotoServer

from .fault_harness import Load, ServeProcess, metric, running
from .gateway_harness import eventually
from .helpers import register_tiny

MODEL = "faulty"


def _snapshot(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _restore(endpoint: str, bucket: str, objects: dict[str, bytes]) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)


def test_s3_outage_under_load_fails_no_prediction_and_polling_resumes(tmp_path: Path) -> None:
    """Observed: with the S3 server stopped for many poll rounds under load, every prediction is
    still answered 200 by v1; poll errors are counted in `inferloop_registry_poll_errors_total`,
    the warning is logged once per distinct error (not per failed poll: polls back off); when a new
    S3 server comes up on the same port with the same objects, polling resumes and a promotion made
    there is served."""
    first = MotoServer()
    first.start()
    second = MotoServer()
    second.port, second.endpoint = first.port, first.endpoint  # "the same endpoint comes back"
    gw = None
    try:
        bucket = first.create_bucket()
        uri = f"s3://{bucket}/prod"
        with Registry.open(uri, s3_endpoint=first.endpoint) as reg:
            v1 = register_tiny(reg, MODEL, seed=1)
            reg.promote(MODEL, v1, "production")
        gw = ServeProcess(tmp_path, ["--registry", uri, "--s3-endpoint", first.endpoint, "--model", MODEL,
                                     "--cache-dir", str(tmp_path / "cache")])
        gw.wait_ready()
        objects = _snapshot(first.endpoint, bucket)
        with Load(gw.url, MODEL, threads=3) as load:
            load.wait_for(100)
            first.stop()
            errors = 'inferloop_registry_poll_errors_total'
            eventually(lambda: metric(gw.metrics(), errors, model=MODEL, stage="production") >= 5, 60,
                       "5 failed polls")
            load.wait_for(200)  # still serving while the registry is gone
            polls_during_outage = gw.status(MODEL)["stages"]["production"]["polls"]
            second.start()
            _restore(second.endpoint, bucket, objects)
            with Registry.open(uri, s3_endpoint=second.endpoint) as reg:
                v2 = register_tiny(reg, MODEL, seed=2)
                reg.promote(MODEL, v2, "production", actor="test", reason="after the outage")
            gw.wait_serving(MODEL, v2)
            load.wait_for(100)
        stage = gw.status(MODEL)["stages"]["production"]
        text = gw.metrics()
    finally:
        if gw is not None:
            gw.close()
        first.stop()
        second.stop()
    failed = load.failed()
    assert not failed, failed[:5]
    assert {a.version for a in load.ok()} == {v1, v2}
    assert stage["polls"] > polls_during_outage and stage["last_poll_error"] is None
    poll_errors = metric(text, "inferloop_registry_poll_errors_total", model=MODEL, stage="production")
    warnings = [line for line in gw.output().splitlines() if f"cannot poll {MODEL} production pointer" in line]
    distinct = {line.split("pointer (", 1)[1] for line in warnings}
    print(f"\n{len(load.answers)} answers, 0 failed; {poll_errors:.0f} failed polls, {len(warnings)} warnings")
    assert poll_errors >= 5 and len(warnings) == len(distinct) < poll_errors


def test_truncated_and_missing_blobs_are_never_loaded(moto_server, tmp_path: Path, tamper) -> None:
    """Observed, on S3, under load: a production pointer moved to a version whose blob was
    truncated, and then to one whose blob was deleted after the promotion, is never served —
    every prediction is answered 200 by v1 — and each gets exactly one `load_failed` event that says
    why (corrupt bytes with their size / blob not found); a good version promoted next is served."""
    registry_uri = f"s3://{moto_server.create_bucket()}/prod"  # a corrupt file-store blob: test_gateway_swap.py
    with Registry.open(registry_uri) as reg:
        v1, truncated, missing, good = (register_tiny(reg, MODEL, seed=s) for s in (1, 2, 3, 4))
        reg.promote(MODEL, v1, "production")
        blob = {v: f"blobs/sha256/{d[:2]}/{d}" for v in (truncated, missing)
                for d in [reg.get_manifest(MODEL, v).artifact.digest]}
        size = reg.get_manifest(MODEL, truncated).artifact.size
        tamper.overwrite(registry_uri, blob[truncated], reg.get_blob(reg.get_manifest(MODEL, truncated)
                                                                     .artifact.digest)[: size // 2])
    gw = ServeProcess(tmp_path, ["--registry", registry_uri, "--model", MODEL, "--cache-dir", str(tmp_path / "c")])
    with running(gw), Registry.open(registry_uri) as reg:
        gw.wait_ready()

        def failed_once(version: int) -> bool:
            return any(e.version == version for e in reg.history(MODEL, kinds={"load_failed"}))

        with Load(gw.url, MODEL, threads=3) as load:
            load.wait_for(50)
            reg.promote(MODEL, truncated, "production", reason="blob cut short")
            eventually(lambda: failed_once(truncated), 30, "load_failed for the truncated blob")
            gw.signal(signal.SIGSTOP)  # so the blob can vanish between the promotion and the load
            reg.promote(MODEL, missing, "production", reason="blob deleted after promotion")
            tamper.remove(registry_uri, blob[missing])
            gw.signal(signal.SIGCONT)
            eventually(lambda: failed_once(missing), 30, "load_failed for the missing blob")
            eventually(lambda: len(gw.status(MODEL)["stages"]["production"]["errors"]) >= 3, 30, "retries")
            load.wait_for(50)
            assert gw.serving(MODEL) == v1
            reg.promote(MODEL, good, "production")
            gw.wait_serving(MODEL, good)
            load.wait_for(50)
        events = reg.history(MODEL, kinds={"load_failed"})
    failed = load.failed()
    assert not failed, failed[:5]
    assert {a.version for a in load.ok()} == {v1, good}
    assert [(e.version, e.details["phase"], e.details["serving"]) for e in events] == [
        (truncated, "fetch", v1), (missing, "fetch", v1)]
    assert "corrupt" in events[0].reason and f"({size // 2} bytes)" in events[0].reason
    assert "not found" in events[1].reason


def test_gateway_killed_during_a_swap_restarts_on_the_pointers_version(tmp_path: Path) -> None:
    """Observed: a gateway SIGKILLed after loading v2 but before switching to it (failpoint
    `gateway.swap.before_switch`) had answered every request it accepted with v1; the registry is
    unharmed (`verify` clean, pointer at v2, no `swapped` event for the dead swap); a gateway started
    on the same cache directory, whose copy of v2 we then cut in half, notices the damage, fetches v2
    again from the registry and serves it."""
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        v1, v2 = register_tiny(reg, MODEL, seed=1), register_tiny(reg, MODEL, seed=2)
        reg.promote(MODEL, v1, "production")
    args = ["--registry", uri, "--model", MODEL, "--cache-dir", str(tmp_path / "cache")]
    doomed = ServeProcess(tmp_path, args, env={"INFERLOOP_FAILPOINT": "gateway.swap.before_switch"})
    with running(doomed):
        doomed.wait_ready()
        with Load(doomed.url, MODEL, threads=3) as load:
            load.wait_for(100)
            with Registry.open(uri) as reg:
                reg.promote(MODEL, v2, "production", reason="swap that will be killed")
            assert doomed.proc.wait(60) == -signal.SIGKILL
        answered = load.ok()
        assert answered and {a.version for a in answered} == {v1}
        # after the kill only connection errors: nothing was half-answered
        assert all(a.status == 0 for a in load.failed())
    with Registry.open(uri) as reg:
        assert reg.verify(MODEL) == [] and reg.get_pointer(MODEL, "production").version == v2
        assert [e.version for e in reg.history(MODEL, kinds={"swapped"})] == [v1]
        digest = reg.get_manifest(MODEL, v2).artifact.digest
    copy = tmp_path / "cache" / "sha256" / digest[:2] / digest
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    restarted = ServeProcess(tmp_path, args)
    with running(restarted):
        restarted.wait_ready()
        assert restarted.serving(MODEL) == v2
        stage = restarted.status(MODEL)["stages"]["production"]
        assert stage["swaps"] == 1 and stage["errors"] == []
        assert "is damaged; deleting it and fetching again" in restarted.output()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "inferloop.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_promote_killed_after_moving_the_pointer(tmp_path: Path) -> None:
    """Observed: `inferloop registry promote` SIGKILLed right after its
    compare-and-swap (failpoint `promote.after_pointer`) leaves a pointer to a complete version
    (manifest and blob present, `verify` reports only the missing `promoted` event); a running
    gateway serves that version with no failed prediction (the killed writer never advanced the
    change record: the gateway's safety-net scan, `--full-scan-interval`, finds the move); the next
    CLI promote records the interrupted move and `verify` is clean again. (The same kill through the
    Python API, on both backends: test_registry_processes.py.)"""
    registry_uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(registry_uri) as reg:
        v1, v2 = register_tiny(reg, MODEL, seed=1), register_tiny(reg, MODEL, seed=2)
        reg.promote(MODEL, v1, "production")
    gw = ServeProcess(tmp_path, ["--registry", registry_uri, "--model", MODEL, "--cache-dir", str(tmp_path / "c"),
                                 "--full-scan-interval", "2"])
    with running(gw):
        gw.wait_ready()
        with Load(gw.url, MODEL, threads=2) as load:
            load.wait_for(50)
            r = _cli("registry", "promote", MODEL, str(v2), "--stage", "production", "--registry", registry_uri,
                     env={"INFERLOOP_FAILPOINT": "promote.after_pointer"})
            assert r.returncode == -signal.SIGKILL, r.stderr
            with Registry.open(registry_uri) as reg:
                assert reg.get_pointer(MODEL, "production").version == v2
                problems = reg.verify(MODEL)
            assert len(problems) == 1 and "has no event" in problems[0], problems
            gw.wait_serving(MODEL, v2)
            load.wait_for(50)
    failed = load.failed()
    assert not failed, failed[:5]
    r = _cli("registry", "promote", MODEL, str(v1), "--stage", "production", "--registry", registry_uri,
             "--reason", "after the crash")
    assert r.returncode == 0, r.stderr
    with Registry.open(registry_uri) as reg:
        assert reg.verify(MODEL) == []
        moves = [(e.version, e.details.get("recovered", False)) for e in reg.history(MODEL, kinds={"promoted"})]
    assert moves == [(v1, False), (v2, True), (v1, False)]
