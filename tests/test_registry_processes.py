"""Registry guarantees that need real processes: racing promoters on files, writers killed with
SIGKILL at chosen points, and the CLI's exit codes and messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from inferloop.registry import Registry

from .helpers import register_tiny

CHILD = textwrap.dedent("""
    import sys
    from inferloop.registry import Registry, Conflict
    from tests.helpers import register_tiny
    uri, action = sys.argv[1], sys.argv[2]
    with Registry.open(uri) as reg:
        if action == "register":
            print(register_tiny(reg, "m", int(sys.argv[3])))
        elif action == "promote":
            try:
                reg.promote("m", int(sys.argv[3]), "production", actor=f"p{sys.argv[3]}", expected_version=None)
                print("won")
            except Conflict:
                print("conflict")
""")


def _child(uri: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, uri, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_racing_promoter_processes_on_files(tmp_path) -> None:
    uri = f"file://{tmp_path / 'reg'}"
    with Registry.open(uri) as reg:
        versions = [register_tiny(reg, "m", s) for s in range(1, 7)]
    procs = [_child(uri, "promote", str(v)) for v in versions]
    outcomes = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outcomes) == ["conflict"] * 5 + ["won"]
    with Registry.open(uri) as reg:
        winner = versions[outcomes.index("won")]
        assert reg.get_pointer("m", "production").version == winner
        promoted = reg.history("m", kinds={"promoted"})
        assert [e.version for e in promoted] == [winner]
        assert reg.verify("m") == []


def test_racing_register_processes_allocate_distinct_contiguous_versions(registry_uri: str) -> None:
    procs = [_child(registry_uri, "register", str(s)) for s in range(1, 5)]
    got = sorted(int(p.communicate(timeout=120)[0]) for p in procs)
    assert got == [1, 2, 3, 4]
    with Registry.open(registry_uri) as reg:
        assert reg.verify("m") == []


@pytest.mark.parametrize("point", ["register.after_blob", "register.after_manifest"])
def test_writer_killed_during_registration_leaves_no_dangling_and_no_duplicate(registry_uri: str, point) -> None:
    with Registry.open(registry_uri) as reg:
        reg.promote("m", register_tiny(reg, "m", 1), "production")
    p = _child(registry_uri, "register", "2", env={"INFERLOOP_FAILPOINT": point})
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    with Registry.open(registry_uri) as reg:
        assert reg.get_pointer("m", "production").version == 1
        assert reg.verify("m") == []
        again = register_tiny(reg, "m", 2)  # the retry after the crash
        assert again == 2 and reg.latest_version("m") == 2  # no duplicate version


def test_promoter_killed_between_pointer_and_event_is_healed(registry_uri: str) -> None:
    with Registry.open(registry_uri) as reg:
        for s in (1, 2, 3):
            register_tiny(reg, "m", s)
    code = ("import sys; from inferloop.registry import Registry\n"
            "with Registry.open(sys.argv[1]) as r: r.promote('m', 1, 'production', actor='killed', reason='x')")
    p = subprocess.run([sys.executable, "-c", code, registry_uri], env={**os.environ,
                       "INFERLOOP_FAILPOINT": "promote.after_pointer"}, timeout=120)
    assert p.returncode == -signal.SIGKILL
    with Registry.open(registry_uri) as reg:
        assert reg.get_pointer("m", "production").version == 1  # the move happened, pointing at a full version
        assert any("has no event" in x for x in reg.verify("m"))
        reg.promote("m", 2, "production", actor="next")
        moves = [(e.version, e.actor) for e in reg.history("m", kinds={"promoted"})]
        assert moves == [(1, "killed"), (2, "next")]
        assert reg.verify("m") == []


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferloop.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_round_trip(registry_uri: str) -> None:
    with Registry.open(registry_uri) as reg:
        for s in (1, 2, 3):
            register_tiny(reg, "m", s)
    r = _cli("registry", "promote", "m", "1", "--stage", "production", "--registry", registry_uri,
             "--reason", "first")
    assert r.returncode == 0, r.stderr
    r = _cli("registry", "promote", "m", "2", "--stage", "production", "--reason", "second",
             env={"INFERLOOP_REGISTRY": registry_uri})
    assert r.returncode == 0, r.stderr
    r = _cli("registry", "rollback", "m", "--stage", "production", "--registry", registry_uri, "--json")
    assert json.loads(r.stdout)["version"] == 1
    r = _cli("registry", "list", "--registry", registry_uri)
    assert r.returncode == 0 and "m" in r.stdout and "PRODUCTION" in r.stdout
    r = _cli("registry", "list", "--registry", registry_uri, "--json")  # the table's columns, not just names
    assert json.loads(r.stdout) == [{"name": "m", "latest": 3, "staging": None, "shadow": None, "production": 1}]
    r = _cli("registry", "list", "m", "--registry", registry_uri, "--json")
    listed = json.loads(r.stdout)
    assert [row["version"] for row in listed] == [1, 2, 3]
    assert [row["stage"] for row in listed] == ["production", None, None]
    assert all(len(row["digest"]) == 64 and row["created_at"] and "metrics" in row for row in listed)
    r = _cli("registry", "show", "m", "2", "--registry", registry_uri, "--json")
    assert json.loads(r.stdout)["version"] == 2
    r = _cli("registry", "history", "m", "--registry", registry_uri)
    assert r.returncode == 0 and "rolled_back" in r.stdout and "first" in r.stdout
    r = _cli("registry", "verify", "m", "--registry", registry_uri)
    assert r.returncode == 0 and "OK" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["registry", "show", "nope"], "not found"),
    (["registry", "show", "m", "9"], "no version 9"),
    (["registry", "promote", "m", "1", "--stage", "prod"], "unknown stage"),
    (["registry", "promote", "../x", "1", "--stage", "production"], "invalid model name"),
    (["registry", "promote", "a/b", "1", "--stage", "production"], "invalid model name"),
    (["registry", "promote", "m", "abc", "--stage", "production"], "invalid version"),
    (["registry", "rollback", "m", "--stage", "production"], "no production pointer"),
    (["registry", "history", ""], "invalid model name"),
])
def test_cli_bad_input_is_one_clear_line(registry_uri: str, args, message) -> None:
    with Registry.open(registry_uri) as reg:
        register_tiny(reg, "m", 1)
    r = _cli(*args, "--registry", registry_uri)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with Registry.open(registry_uri) as reg:
        assert reg.get_pointer("m", "production") is None and reg.latest_version("m") == 1


@pytest.mark.parametrize("uri, message", [
    ("s3:///prefix", "names no bucket"),
    ("fiel:///tmp/x", "unknown registry URI scheme"),
    ("", "empty registry URI"),
])
def test_cli_bad_registry_uri(uri, message) -> None:
    r = _cli("registry", "list", "--registry", uri, env={"INFERLOOP_REGISTRY": ""})
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_unreachable_s3_endpoint_and_missing_bucket(moto_server) -> None:
    from .conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    r = _cli("registry", "list", "--registry", "s3://bucket-x/p", "--s3-endpoint", dead)
    assert r.returncode != 0 and "cannot reach S3" in r.stderr and "Traceback" not in r.stderr
    r = _cli("registry", "list", "--registry", "s3://no-such-bucket-here/p")
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr
