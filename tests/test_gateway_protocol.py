"""The gateway's HTTP surface against a real uvicorn: OIP v2 and v1 inference, metadata, health,
headers, metrics, Triton's own client, and every kind of bad input (4xx, never 500, server fine)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from inferloop.registry import Registry
from tests.gateway_harness import AUTH, ThreadedGateway, infer_body, settings_for
from tests.helpers import register_tiny

MODEL = "demo"
PENDING = "pending"  # configured, registered, never promoted: not ready
MAX_ROWS = 16
MAX_BODY = 64 * 1024


class Served:
    def __init__(self, gw: ThreadedGateway, module: torch.nn.Module, version: int) -> None:
        self.gw = gw
        self.client = gw.client
        self.module = module
        self.version = version

    def expected(self, rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.as_tensor(rows, dtype=torch.float32)).numpy()


@pytest.fixture(scope="module", params=["http-fast-path", "asgi"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Every test here runs against both ways an inference request is answered: in uvicorn's HTTP
    protocol (inferloop.gateway.transport.http_protocol, the default) and through ASGI (`--http-fast-path off`)."""
    tmp = tmp_path_factory.mktemp("gateway-protocol")
    uri = f"file://{tmp / 'registry'}"
    with Registry.open(uri) as reg:
        version = register_tiny(reg, MODEL, seed=1)
        reg.promote(MODEL, version, "production")
        register_tiny(reg, PENDING, seed=2)
        module = reg.load_model(MODEL, version)
    settings = settings_for(uri, [MODEL, PENDING], tmp,
                            server={"max_request_rows": MAX_ROWS, "max_body_bytes": MAX_BODY,
                                    "http_fast_path": request.param == "http-fast-path"})
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        yield Served(gw, module, version)


def rows_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


# -- happy paths ----------------------------------------------------------------------------------
def test_oip_infer_returns_the_models_outputs_with_version_and_request_id(served: Served) -> None:
    rows = rows_of(3)
    r = served.client.post(f"/v2/models/{MODEL}/infer", json=infer_body(rows.tolist(), "req-1"),
                           headers={"x-request-id": "client-chosen-id"})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == str(served.version)
    assert r.headers["x-request-id"] == "client-chosen-id"
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == MODEL and body["model_version"] == str(served.version)
    (out,) = body["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [3, 1]
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 1), served.expected(rows), rtol=1e-5, atol=1e-6)


def test_a_request_id_is_generated_when_absent_and_unique(served: Served) -> None:
    ids = {served.client.post(f"/v2/models/{MODEL}/infer", json=infer_body(rows_of(1).tolist()))
           .headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5 and all(ids)


@pytest.mark.parametrize("layout", ["per-feature", "per-feature-2d", "nested", "fp64", "int32"])
def test_other_input_layouts_and_numeric_datatypes(served: Served, layout: str) -> None:
    rows = rows_of(2, seed=3)
    if layout == "int32":
        rows = np.round(rows * 10)
    features = [f"x{i}" for i in range(8)]
    if layout.startswith("per-feature"):
        shape = [2, 1] if layout.endswith("2d") else [2]
        inputs = [{"name": f, "shape": shape, "datatype": "FP32", "data": rows[:, i].tolist()}
                  for i, f in enumerate(features)][::-1]  # any order
    else:
        dtype = {"nested": "FP32", "fp64": "FP64", "int32": "INT32"}[layout]
        data = rows.tolist() if layout == "nested" else rows.ravel().tolist()
        if layout == "int32":
            data = [int(v) for v in data]
        inputs = [{"name": "input", "shape": [2, 8], "datatype": dtype, "data": data}]
    r = served.client.post(f"/v2/models/{MODEL}/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"]).reshape(2, 1)
    np.testing.assert_allclose(got, served.expected(rows), rtol=1e-5, atol=1e-6)


def test_v1_predict_accepts_rows_and_records(served: Served) -> None:
    rows = rows_of(4, seed=5)
    expected = served.expected(rows)[:, 0]
    r = served.client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows.tolist()})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == MODEL and r.json()["version"] == served.version
    assert r.headers["x-model-version"] == str(served.version) and r.headers["x-request-id"]
    np.testing.assert_allclose(r.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    records = [{f"x{i}": float(v) for i, v in enumerate(row)} for row in rows]
    r = served.client.post(f"/v1/models/{MODEL}/predict", json={"instances": records})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], expected, rtol=1e-5, atol=1e-6)


def test_metadata_health_and_readiness(served: Served) -> None:
    c = served.client
    assert c.get("/v2/health/live").json() == {"live": True}
    r = c.get("/v2/health/ready")
    assert r.status_code == 503  # the pending model has no production version
    assert r.json()["models"] == {MODEL: served.version, PENDING: None}
    assert c.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert c.get(f"/v2/models/{PENDING}/ready").status_code == 503
    meta = c.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["parameters"]["features"] == [f"x{i}" for i in range(8)]
    assert meta["versions"] == [str(served.version)]
    assert c.get("/v2").json()["extensions"] == ["binary_tensor_data"]


def test_metrics_use_the_contract_names_on_the_apps_own_registry(served: Served) -> None:
    served.client.post(f"/v2/models/{MODEL}/infer", json=infer_body(rows_of(1).tolist()))
    text = served.client.get("/metrics").text
    for name in ["inferloop_requests_total", "inferloop_request_duration_seconds_bucket",
                 "inferloop_inference_duration_seconds_bucket", "inferloop_batch_size_bucket",
                 "inferloop_model_swaps_total", "inferloop_model_slots"]:
        assert f"\n{name}{{" in text, name
    assert f'inferloop_model_info{{model="{MODEL}",stage="production",version="{served.version}"}} 1.0' in text
    assert f'inferloop_requests_total{{code="200",model="{MODEL}",role="primary"}}' in text
    for declared in ["inferloop_model_load_failures_total", "inferloop_registry_poll_errors_total"]:
        assert f"# TYPE {declared} counter" in text, declared


def test_tritonclient_infers_through_the_gateway(served: Served) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=served.gw.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_model_ready(MODEL)
        assert client.get_model_metadata(MODEL)["inputs"][0]["shape"] == [-1, 8]
        rows = rows_of(5, seed=7)
        for binary in (True, False):
            tensor = triton.InferInput("input", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            outputs = [triton.InferRequestedOutput("output", binary_data=binary)]
            result = client.infer(MODEL, [tensor], outputs=outputs, request_id=f"triton-{binary}")
            np.testing.assert_allclose(result.as_numpy("output"), served.expected(rows), rtol=1e-5, atol=1e-6)
            assert result.get_response()["id"] == f"triton-{binary}"
        result = client.infer(MODEL, [tensor])  # no outputs named: Triton asks for all of them in binary
        np.testing.assert_allclose(result.as_numpy("output"), served.expected(rows), rtol=1e-5, atol=1e-6)
    finally:
        client.close()


# -- bad input matrix -----------------------------------------------------------------------------
def _oip(shape: list[int], data: list, datatype: str = "FP32", name: str = "input") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


ROW = [0.5] * 8
JSON = {"content-type": "application/json"}
BAD_INPUTS = [
    # id, path, body (bytes or JSON-able), headers, status, words the message must contain
    ("malformed-json", "infer", b'{"inputs": [', JSON, 400, "malformed JSON"),
    ("nan-literal", "infer", b'{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32",'
     b'"data":[NaN,1,1,1,1,1,1,1]}]}', JSON, 400, "NaN"),
    ("wrong-content-type", "infer", b'{"inputs": []}', {"content-type": "text/plain"}, 415,
     "-H 'Content-Type: application/json'"),
    # curl -d's default type is read as JSON (its JSON bodies run: tests/test_docs_examples.py); a real form is not JSON
    ("form-content-type", "predict", b"instances=1", {"content-type": "application/x-www-form-urlencoded"},
     400, "malformed JSON"),
    ("missing-inputs", "infer", {"id": "x"}, None, 400, "inputs"),
    ("empty-inputs", "infer", {"inputs": []}, None, 400, "inputs"),
    ("wrong-shape", "infer", _oip([1, 7], ROW[:7]), None, 400, "[n, 8]"),
    ("one-dimensional", "infer", _oip([8], ROW), None, 400, "unknown input"),
    ("shape-data-mismatch", "infer", _oip([1, 8], ROW[:7]), None, 400, "holds 7 values"),
    ("negative-shape", "infer", _oip([-1, 8], ROW), None, 400, "invalid shape"),
    ("wrong-datatype", "infer", _oip([1, 8], ["a"] * 8, "BYTES"), None, 400, "datatype"),
    ("strings-as-fp32", "infer", _oip([1, 8], ["1"] * 8), None, 400, "Expected `float`"),
    ("null-value", "infer", _oip([1, 8], [None] * 8), None, 400, "Expected `float`"),
    ("ragged-nested", "infer", _oip([2, 8], [ROW, ROW[:7]]), None, 400, "ragged"),
    ("json-overflow", "infer", b'{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32",'
     b'"data":[1e999,1,1,1,1,1,1,1]}]}', JSON, 400, "out of range"),
    ("float32-overflow", "infer", _oip([1, 8], [1e39] + ROW[1:]), None, 400, "float32 range"),
    ("empty-batch", "infer", _oip([0, 8], []), None, 400, "empty batch"),
    ("too-many-rows", "infer", _oip([MAX_ROWS + 1, 8], ROW * (MAX_ROWS + 1)), None, 400, "exceed the limit"),
    ("missing-feature-input", "infer", {"inputs": [{"name": "x0", "shape": [1], "datatype": "FP32", "data": [1]}]},
     None, 400, "missing input"),
    ("unknown-output", "infer", {**_oip([1, 8], ROW), "outputs": [{"name": "logits"}]}, None, 400,
     "unknown output"),
    ("body-over-limit", "infer", b"[" + b"1," * MAX_BODY + b"1]", JSON, 413, "larger than"),
    ("v1-missing-feature", "predict", {"instances": [{f"x{i}": 1.0 for i in range(7)}]}, None, 400,
     "missing feature"),
    ("v1-unknown-feature", "predict", {"instances": [{**{f"x{i}": 1.0 for i in range(8)}, "y": 1.0}]}, None, 400,
     "unknown feature"),
    ("v1-wrong-width", "predict", {"instances": [[1.0] * 9]}, None, 400, "takes 8"),
    ("v1-ragged", "predict", {"instances": [[1.0] * 8, [1.0] * 7]}, None, 400, "different lengths"),
    ("v1-empty", "predict", {"instances": []}, None, 400, "empty batch"),
    ("v1-not-a-list", "predict", {"instances": 3}, None, 400, "Expected `array`"),
]


def _send(client: httpx.Client, path: str, body: object, headers: dict | None, model: str = MODEL) -> httpx.Response:
    url = f"/v2/models/{model}/infer" if path == "infer" else f"/v1/models/{model}/predict"
    if isinstance(body, bytes):
        return client.post(url, content=body, headers=headers or {})
    return client.post(url, json=body, headers=headers or {})


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_healthy(served: Served, case: tuple) -> None:
    _, path, body, headers, status, words = case
    r = _send(served.client, path, body, headers)
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.json()
    assert r.headers["x-request-id"]
    ok = served.client.post(f"/v2/models/{MODEL}/infer", json=infer_body([ROW]))
    assert ok.status_code == 200 and served.client.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize("content_type", [None, b"application/x-www-form-urlencoded"], ids=["none", "curl-d-form"])
def test_json_without_a_content_type_or_with_curls_form_type_is_served(served: Served, content_type: bytes | None
                                                                       ) -> None:
    """What `curl URL -d '{...}'` sends (Content-Type: application/x-www-form-urlencoded), and a request
    with no Content-Type at all, byte for byte on a raw socket: both are read as JSON and answered."""
    import socket

    body = b'{"instances": [' + b"[" + b", ".join(b"0.5" for _ in ROW) + b"]]}"
    head = (f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode()
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    host, port = served.gw.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"\r\n" + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"200", reply
    assert b'"predictions"' in rest and b"x-model-version: " in rest.lower()


def test_binary_tensor_nan_is_refused(served: Served) -> None:
    raw = np.array([[np.nan] + ROW[1:]], dtype=np.float32).tobytes()
    header = ('{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32",'
              f'"parameters":{{"binary_data_size":{len(raw)}}}}}]}}').encode()
    r = served.client.post(f"/v2/models/{MODEL}/infer", content=header + raw,
                           headers={"inference-header-content-length": str(len(header)),
                                    "content-type": "application/octet-stream"})
    assert r.status_code == 400 and "NaN" in r.json()["error"], r.text
    r = served.client.post(f"/v2/models/{MODEL}/infer", content=header + raw[:-4],
                           headers={"inference-header-content-length": str(len(header))})
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"], r.text


@pytest.mark.parametrize("model,status,words", [("nope", 404, "not served"), (PENDING, 503, "no production version"),
                                                ("Bad/Name", 404, "")])
def test_unknown_or_unready_models(served: Served, model: str, status: int, words: str) -> None:
    for path in ("infer", "predict"):
        r = _send(served.client, path, _oip([1, 8], ROW) if path == "infer" else {"instances": [ROW]}, None, model)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]


def test_framework_errors_use_the_same_error_shape(served: Served) -> None:
    for path in (f"/v2/models/{MODEL}/infer", f"/v1/models/{MODEL}/predict"):
        r = served.client.get(path)
        assert r.status_code == 405 and "POST" in r.json()["error"] and r.headers["allow"] == "POST"
    r = served.client.get("/v3/nothing")
    assert r.status_code == 404 and "error" in r.json()
    # paths that only look like an inference route are Litestar's (404), not a model named "a/b"
    for path in ("/v2/models//infer", "/v2/models/a/b/infer", "/v1/models/predict"):
        r = served.client.post(path, json=infer_body(rows_of(1).tolist()))
        assert r.status_code in (404, 405) and "error" in r.json(), (path, r.text)


def test_inference_routes_take_a_trailing_slash_and_chunked_bodies(served: Served) -> None:
    """The raw ASGI inference routes (inferloop.gateway.transport.inference) accept what Litestar's router did: one
    trailing slash, and a body sent in chunks without a Content-Length."""
    rows = rows_of(2, seed=9)
    r = served.client.post(f"/v2/models/{MODEL}/infer/", json=infer_body(rows.tolist()))
    assert r.status_code == 200, r.text
    body = httpx.Request("POST", "/", json=infer_body(rows.tolist())).read()
    r = served.client.post(f"/v2/models/{MODEL}/infer", content=iter([body[:10], body[10:50], body[50:]]),
                           headers={"content-type": "application/json"})
    assert r.status_code == 200 and "content-length" not in r.request.headers, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, 1), served.expected(rows),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": "Basic dGVzdA=="},
                                     {"authorization": AUTH["authorization"] + "x"}])
def test_admin_without_or_with_a_wrong_token_is_401(served: Served, headers: dict) -> None:
    for method, path, body in [("GET", f"/admin/models/{MODEL}", None),
                               ("POST", f"/admin/models/{MODEL}/promote", {"version": 1}),
                               ("POST", f"/admin/models/{MODEL}/rollback", {})]:
        r = served.client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert "bearer token" in r.json()["error"] and r.headers["www-authenticate"].startswith("Bearer")
    assert served.client.get(f"/admin/models/{MODEL}", headers=AUTH).status_code == 200


def test_error_counts_reach_the_metrics(served: Served) -> None:
    served.client.post(f"/v2/models/{MODEL}/infer", json=_oip([1, 7], ROW[:7]))
    served.client.post("/v2/models/nope/infer", json=_oip([1, 8], ROW))
    text = served.client.get("/metrics").text
    assert f'inferloop_requests_total{{code="400",model="{MODEL}",role="primary"}}' in text
    assert 'inferloop_requests_total{code="404",model="_unknown",role="primary"}' in text
