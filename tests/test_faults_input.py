"""Bad input and abuse against one real `inferloop serve` child (module-scoped, small limits):
schema-driven fuzzing of every endpoint, admin calls without the right token, names and versions
built to escape storage keys, bodies and batches over the limits, slow bodies (slow-loris) and
clients that vanish mid-body over raw sockets, and a malicious pickle placed in the registry.
Every test also checks the gateway answered no 5xx and logged no unhandled error. Bad-input
classes already covered one by one: test_gateway_protocol.py (shapes, datatypes, NaN, rows, 413
with Content-Length, 401 with a wrong token), test_gateway_admin.py (no token: 403; CAS; actor)."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from inferloop.registry import Registry, UnsupportedArtifact
from inferloop.registry.manifest import ArtifactInfo

from .fault_harness import ROW, ServeProcess, metric
from .gateway_harness import AUTH, eventually, infer_body
from .helpers import register_tiny

MODEL, PICKLED, FUZZED = "m", "pickled", "fuzzed"  # the fuzzer's admin calls move only FUZZED
MAX_BODY, MAX_ROWS, BODY_TIMEOUT = 64 * 1024, 16, 1.0


@dataclass
class Served:
    gw: ServeProcess
    uri: str
    root: Path  # the registry directory

    @property
    def port(self) -> int:
        return self.gw.port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("abuse")
    uri = f"file://{tmp / 'registry'}"
    with Registry.open(uri) as reg:
        for name in (MODEL, PICKLED, FUZZED):
            reg.promote(name, register_tiny(reg, name, seed=1), "production")
            register_tiny(reg, name, seed=2)
    gw = ServeProcess(tmp, ["--registry", uri, "--model", MODEL, "--model", PICKLED, "--model", FUZZED,
                            "--cache-dir", str(tmp / "c"), "--max-body-bytes", str(MAX_BODY),
                            "--max-request-rows", str(MAX_ROWS), "--body-timeout", str(BODY_TIMEOUT),
                            "--admin-wait", "5"])
    try:
        gw.wait_ready()
        yield Served(gw, uri, tmp / "registry")
    finally:
        gw.close()


def assert_no_server_error(served: Served) -> None:
    text = served.gw.metrics()
    fives = [line for line in text.splitlines() if line.startswith("inferloop_requests_total") and 'code="5' in line]
    assert not fives, fives
    assert "unhandled error" not in served.gw.output() and "Traceback" not in served.gw.output()


# -- schema-driven fuzzing ------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_schema(served: Served) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{served.gw.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
FUZZED_CASES: Counter[tuple[str, str]] = Counter()  # (method, path template) -> cases that ran to the end


@schema.parametrize()
@settings(max_examples=50, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_no_5xx_and_match_the_schema(case: schemathesis.Case, served: Served) -> None:
    """Observed: a fixed number of generated requests per endpoint (valid and invalid per the
    OpenAPI document the gateway serves, admin calls with the token): no 5xx, no crash, every
    answer's status, content type and body match the document."""
    headers = dict(AUTH) if case.path.startswith("/admin") else {}
    if case.path_parameters and len(case.path_parameters["name"]) % 4:  # 3 in 4 reach a model that is served
        case.path_parameters["name"] = FUZZED if case.path.startswith("/admin") else MODEL
    case.call_and_validate(base_url=served.gw.url, headers=headers, timeout=30,
                           checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
    assert served.gw.alive
    FUZZED_CASES[(case.method.upper(), case.path)] += 1


def test_the_fuzzer_ran_every_operation_of_the_document(served: Served) -> None:
    """Observed: the fuzz test above really ran: every operation in the served OpenAPI document got
    generated cases that completed. A schemathesis/pytest incompatibility, or a document the fuzzer
    cannot read, fails here loudly instead of dropping the fuzz suite silently."""
    document = served.gw.client.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item if method in {"get", "post", "put", "patch", "delete"}}
    assert operations, "the gateway's OpenAPI document lists no operations"
    starved = sorted(op for op in operations if not FUZZED_CASES[op])
    assert not starved, f"operations the fuzzer did not exercise (cases run: {dict(FUZZED_CASES)}): {starved}"


def test_after_fuzzing_the_gateway_is_healthy_and_logged_no_unhandled_error(served: Served) -> None:
    """Observed: after the fuzzing above, the process still runs, serves, and never counted a 5xx."""
    assert served.gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body([ROW])).status_code == 200
    assert_no_server_error(served)


# -- admin ----------------------------------------------------------------------------------
ADMIN_CALLS = [("GET", f"/admin/models/{MODEL}", None), ("POST", f"/admin/models/{MODEL}/promote", {"version": 2}),
               ("POST", f"/admin/models/{MODEL}/rollback", {}), ("GET", f"/admin/models/{MODEL}/shadow", None),
               ("POST", f"/admin/models/{MODEL}/shadow", {"sample_rate": 0.5}),
               ("GET", f"/admin/models/{MODEL}/drift", None)]
BAD_AUTH = [{}, {"authorization": ""}, {"authorization": "Bearer"}, {"authorization": "Bearer x"},
            {"authorization": AUTH["authorization"][:-1]}, {"authorization": AUTH["authorization"] + "0"},
            {"authorization": AUTH["authorization"].split(" ")[1]}, {"authorization": "Basic dGVzdDp0ZXN0"},
            {"authorization": "Bearer " + "x" * 4000}]


def test_every_admin_endpoint_refuses_a_missing_or_wrong_token_and_records_every_action(served: Served) -> None:
    """Observed: each admin endpoint answers 401 (with `WWW-Authenticate: Bearer`) to no token, an
    empty one, a prefix or extension of the right one, the bare token, Basic auth and a 4 kB token;
    nothing moves and nothing is recorded. With the token, every action (promote, rollback, shadow
    sampling change) is in the model's audit log with its actor and client address. The token is
    compared with `hmac.compare_digest` (gateway/transport/admin_auth.py); no 403 case here (no token
    configured): test_gateway_admin.py."""
    with Registry.open(served.uri) as reg:
        before = len(reg.history(MODEL, limit=1000))
        for method, path, body in ADMIN_CALLS:
            for headers in BAD_AUTH:
                r = served.gw.client.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer") and "bearer token" in r.json()["error"]
        assert len(reg.history(MODEL, limit=1000)) == before and reg.get_pointer(MODEL, "production").version == 1
        client = served.gw.client
        moves = [client.post(f"/admin/models/{MODEL}/promote", json={"version": 2, "actor": "alice"}, headers=AUTH),
                 client.post(f"/admin/models/{MODEL}/rollback", json={"actor": "bob"}, headers=AUTH),
                 client.post(f"/admin/models/{MODEL}/shadow", json={"sample_rate": 0.5, "actor": "carol"},
                             headers=AUTH)]
        assert [r.status_code for r in moves] == [200, 200, 200], [r.text for r in moves]
        served.gw.wait_serving(MODEL, 1)
        events = reg.history(MODEL, after=before, limit=1000)
    actions = [(e.kind, e.actor) for e in events if e.kind not in ("archived", "swapped")]  # consequences
    assert actions == [("promoted", "alice via gateway from 127.0.0.1"), ("rolled_back", "bob via gateway from 127.0.0.1"),
                       ("sampling_changed", "carol via gateway from 127.0.0.1")], actions
    assert_no_server_error(served)


# -- names and versions that would escape storage keys ---------------------------------------
NAMES = ["..%2F..%2Fetc", "%2e%2e", "%2e", "%2e%2e%2f%2e%2e%2fescaped", "%252e%252e%252f", "m%2F..%2F..%2Fescaped",
         "m%00", "M", "m%20", "%C3%A9", "a" * 5000, "-m", "m..m"]
BAD_BODIES = [{"version": "../1"}, {"version": 1.5}, {"version": 10**30}, {"version": 0}, {"version": -1},
              {"version": True}, {"version": 1, "stage": "../production"}, {"version": 1, "stage": "production/.."},
              {"version": 1, "expected_version": "1/../2"}]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_names_and_versions_never_reach_a_storage_key(served: Served) -> None:
    """Observed: model names made of `..`, `%2e%2e`, encoded slashes, NUL, upper case, non-ASCII,
    5000 characters, and admin bodies with versions or stages built to traverse, all answer 4xx on
    every endpoint; not one file appears in the registry or next to it."""
    outside = served.root.parent
    before, around = _tree(served.root), _tree(outside)
    client = served.gw.client
    for name in NAMES:
        calls = [("POST", f"/v2/models/{name}/infer", infer_body([ROW])),
                 ("POST", f"/v1/models/{name}/predict", {"instances": [ROW]}),
                 ("GET", f"/v2/models/{name}", None), ("GET", f"/v2/models/{name}/ready", None),
                 ("POST", f"/admin/models/{name}/promote", {"version": 1}),
                 ("POST", f"/admin/models/{name}/rollback", {}), ("GET", f"/admin/models/{name}", None),
                 ("GET", f"/admin/models/{name}/drift", None)]
        for method, path, body in calls:
            r = client.request(method, path, json=body, headers=AUTH)
            assert 400 <= r.status_code < 500, (path[:80], r.status_code, r.text[:200])
    for body in BAD_BODIES:
        r = client.post(f"/admin/models/{MODEL}/promote", json=body, headers=AUTH)
        assert r.status_code == 400, (body, r.text)
    r = client.post(f"/admin/models/{MODEL}/rollback", json={"to_version": "../../1"}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert _tree(served.root) == before
    assert {p for p in _tree(outside) - around if not p.startswith(("c/", "gateway-"))} == set()
    assert_no_server_error(served)


# -- limits ---------------------------------------------------------------------------------
def _raw(served: Served, data: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes, read until the server closes or one response is complete."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=timeout) as s:
        s.sendall(data)
        return _read_response(s)


def _read_response(s: socket.socket) -> bytes:
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return buf
        if not chunk:
            return buf
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                return buf


def test_bodies_and_batches_over_the_limits_are_refused(served: Served) -> None:
    """Observed: a chunked body (no Content-Length) that grows past --max-body-bytes gets 413 once
    the limit is crossed; a Content-Length of 1 TB gets 413 before any body is read; a request of
    --max-request-rows + 1 rows gets 400, through both protocols; a shape claiming 10⁹ rows with one
    row of data gets 400 without allocating it."""
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":['
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"1," * 500
        yield b"1]}]}"

    r = served.gw.client.post(f"/v2/models/{MODEL}/infer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"], r.text
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000000000\r\n\r\n{").encode()
    assert _raw(served, head).startswith(b"HTTP/1.1 413")
    rows = [ROW] * (MAX_ROWS + 1)
    r = served.gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body(rows))
    assert r.status_code == 400 and "exceed the limit" in r.json()["error"]
    r = served.gw.client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows})
    assert r.status_code == 400 and "exceed the limit" in r.json()["error"]
    body = {"inputs": [{"name": "input", "shape": [10**9, 8], "datatype": "FP32", "data": ROW}]}
    assert served.gw.client.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 400
    assert_no_server_error(served)


# -- slow and vanishing clients ---------------------------------------------------------------
def test_slow_bodies_time_out_without_blocking_other_clients(served: Served) -> None:
    """Observed over raw sockets: five clients that send headers and then trickle their body one
    byte at a time get 408 and a closed connection after --body-timeout, while a normal client's
    requests meanwhile are all answered 200; five clients that trickle their *headers* block no one
    either (--header-timeout closes those: tests/test_hostile_clients.py)."""
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n").encode()
    stop = threading.Event()
    answers: list[bytes] = []

    def slow_body() -> None:
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as s:
            s.sendall(head)
            deadline = time.monotonic() + 30
            # one byte every 0.1 s until the server answers; look before each byte, because a byte
            # sent after the server closed makes it reset the connection, which can discard its answer
            while not stop.is_set() and time.monotonic() < deadline:
                if select.select([s], [], [], 0.1)[0]:
                    break
                try:
                    s.sendall(b" ")
                except OSError:
                    break
            answers.append(_read_response(s))

    def slow_headers() -> None:
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as s:
            for byte in f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n".encode():
                if stop.is_set():
                    return
                s.sendall(bytes([byte]))
                time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in [slow_body] * 5 + [slow_headers] * 5]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=served.gw.url, timeout=30) as other:
            for _ in range(20):
                assert other.post(f"/v2/models/{MODEL}/infer", json=infer_body([ROW])).status_code == 200
        eventually(lambda: len(answers) == 5, 30, "slow bodies answered")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    for raw in answers:
        assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
        assert b"--body-timeout" in raw
    assert metric(served.gw.metrics(), "inferloop_requests_total", model=MODEL, role="primary", code="408") >= 5
    assert_no_server_error(served)


def test_a_client_that_vanishes_mid_body_is_not_a_server_error(served: Served) -> None:
    """Observed: clients that close the connection halfway through their body are counted as 499
    (client closed request), not as a 500 with a logged traceback; serving goes on."""
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            'Content-Length: 1000\r\n\r\n{"inputs":').encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            s.sendall(head)
    eventually(lambda: metric(served.gw.metrics(), "inferloop_requests_total", model=MODEL, role="primary",
                              code="499") >= 3, 30, "three vanished clients counted")
    assert served.gw.client.post(f"/v2/models/{MODEL}/infer", json=infer_body([ROW])).status_code == 200
    assert_no_server_error(served)


# -- a malicious pickle in the registry ---------------------------------------------------------
class _WritesAFile:
    """Unpickling this writes `path`: the shape of a real pickle exploit, harmless here."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"echo pwned > {self.path}",))


def _malicious_checkpoint(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"net.0.weight": torch.zeros(16, 8), "payload": _WritesAFile(str(marker))}, buf)
    return buf.getvalue()


def malicious_pt2(marker: Path) -> bytes:
    """A real torch.export archive of a Linear(8, 1) whose weight entry is switched to a pickled
    payload (`use_pickle`): what torch.export.load would unpickle with weights_only=False."""
    from inferloop.registry.exported import export_program

    data, *_ = export_program(torch.nn.Linear(8, 1), torch.zeros(2, 8))
    src = zipfile.ZipFile(io.BytesIO(data))
    config_name = next(n for n in src.namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(src.read(config_name))
    fqn, entry = next(iter(config["config"].items()))
    entry["use_pickle"] = True
    payload = io.BytesIO()
    torch.save({"w": torch.zeros(1, 8), "payload": _WritesAFile(str(marker))}, payload)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == config_name:
                body = json.dumps(config).encode()
            elif info.filename.endswith("/" + entry["path_name"]):
                body = payload.getvalue()
            dst.writestr(info, body)
    return out.getvalue()


def test_a_crafted_pt2_archive_would_run_its_payload_under_torch_but_is_refused_here(tmp_path: Path) -> None:
    """Observed: the crafted archive's payload runs when torch.export.load reads it (control, in a
    child process), while `check_pt2`, `load_program` and so `Registry.load_model` refuse it first."""
    from inferloop.registry.exported import load_program

    control, marker = tmp_path / "control", tmp_path / "marker"
    archive = tmp_path / "evil.pt2"
    archive.write_bytes(malicious_pt2(control))
    subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(archive)!r})"],
                   capture_output=True, timeout=120)
    assert control.exists()  # the payload is live under torch alone
    with pytest.raises(UnsupportedArtifact, match="pickled"):
        load_program(malicious_pt2(marker))
    assert not marker.exists()


def test_a_malicious_pickle_in_the_registry_is_refused_by_gateway_and_registry(served: Served) -> None:
    """Observed: a torch.save checkpoint carrying a payload that writes a file when unpickled (the
    control copy does write it under `torch.load(weights_only=False)`), registered as a `safetensors`
    and as a `pytorch` artifact, and a torch.export archive whose weight is that pickle, promoted
    through the admin API, are refused by the gateway (`applied: false`, the previous version keeps
    serving, a `load_failed` event each) and by `Registry.load_model` (what gate 2 uses); the file is
    never written."""
    control, marker = served.root.parent / "control-pwned", served.root.parent / "pwned"  # pwned-<format>
    torch.load(io.BytesIO(_malicious_checkpoint(control)), weights_only=False)
    assert control.exists()  # the payload is live
    with Registry.open(served.uri) as reg:
        good = reg.get_manifest(PICKLED, 1)
        bad = []
        for fmt in ("safetensors", "pytorch", "torch.export"):
            target = marker.with_name(f"pwned-{fmt}")
            blob = malicious_pt2(target) if fmt == "torch.export" else _malicious_checkpoint(target)
            manifest, created = reg.register_artifact(
                PICKLED, blob, lambda digest, size, fmt=fmt: ArtifactInfo(digest, size, fmt, good.artifact.spec),
                good.lineage, good.signature, warmup=good.warmup, tags=[f"pickle-as-{fmt}"])
            assert created
            bad.append(manifest.version)
        for version, words in zip(bad, ["not a readable safetensors", "only torch.export, onnx and safetensors",
                                        "is pickled"], strict=True):
            r = served.gw.client.post(f"/admin/models/{PICKLED}/promote", json={"version": version}, headers=AUTH)
            assert r.status_code == 200, r.text
            serving = r.json()["serving"]
            assert serving["applied"] is False and serving["version"] == 1 and words in serving["error"], serving
            with pytest.raises(UnsupportedArtifact):
                reg.load_model(PICKLED, version)
        failed = [(e.version, e.details["phase"]) for e in reg.history(PICKLED, kinds={"load_failed"})]
        r = served.gw.client.post(f"/admin/models/{PICKLED}/promote", json={"version": 1}, headers=AUTH)
        assert r.json()["serving"]["applied"] is True
    assert failed == [(version, "load") for version in bad]
    assert not list(marker.parent.glob("pwned*"))
    assert_no_server_error(served)
