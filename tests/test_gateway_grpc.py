"""The OIP v2 gRPC listener (`serve --grpc-port`) against a real gateway on 127.0.0.1, with
tritonclient's own gRPC client (one per thread): metadata, typed and raw contents, a multi-input
model, hot swap under gRPC load, shadow and drift fed by gRPC traffic, the error codes REST's
statuses map to (with REST's messages), limits, and the listener's settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tgrpc
from tritonclient.utils import InferenceServerException

from inferloop.gateway.settings import resolve_settings
from inferloop.registry import Registry
from tests.gateway_harness import AUTH, ThreadedGateway, eventually, settings_for
from tests.helpers import register_tiny

MODEL = "demo"
MULTI = "multi"
MAX_ROWS = 64
MAX_BODY = 64 * 1024


class TwoInputs(torch.nn.Module):
    """Named inputs of two datatypes: FP32 features [n, 4] and an INT64 multiplier [n, 1]."""

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True) * k.to(torch.float32)


class Served:
    def __init__(self, gw: ThreadedGateway, module: torch.nn.Module, versions: list[int]) -> None:
        self.gw = gw
        self.module = module
        self.versions = versions
        self.target = f"127.0.0.1:{gw.app.state.grpc.port}"

    def client(self) -> tg.InferenceServerClient:
        return tg.InferenceServerClient(self.target)

    def stub(self) -> tuple[grpc.Channel, tgrpc.GRPCInferenceServiceStub]:
        channel = grpc.insecure_channel(self.target)
        return channel, tgrpc.GRPCInferenceServiceStub(channel)

    def expected(self, rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.as_tensor(rows)).numpy()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("gateway-grpc")
    uri = f"file://{tmp / 'registry'}"
    with Registry.open(uri) as reg:
        v1 = register_tiny(reg, MODEL, seed=1)
        v2 = register_tiny(reg, MODEL, seed=2)
        v3 = register_tiny(reg, MODEL, seed=3)
        reg.promote(MODEL, v1, "production")
        reg.promote(MODEL, v2, "shadow")
        module = reg.load_model(MODEL, v1)
        with reg.track(MULTI) as run:
            vm = run.register(TwoInputs(), example_inputs=(torch.randn(4, 4), torch.ones(4, 1, dtype=torch.int64)),
                              output_kind="none")
        reg.promote(MULTI, vm, "production")
    settings = settings_for(uri, [MODEL, MULTI], tmp, shadow={"budget": 1.0},
                            server={"grpc_port": 0, "max_request_rows": MAX_ROWS, "max_body_bytes": MAX_BODY})
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, v1)
        gw.wait_serving(MULTI, vm)
        yield Served(gw, module, [v1, v2, v3])


def rows_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


def raw_input(rows: np.ndarray, name: str = "input", datatype: str = "FP32") -> tg.InferInput:
    tensor = tg.InferInput(name, list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    return tensor


def code_and_message(exc: InferenceServerException) -> tuple[str | None, str]:
    return exc.status(), exc.message()


# -- health and metadata -------------------------------------------------------------------------
def test_health_and_metadata_through_tritonclient(served: Served) -> None:
    client = served.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MULTI)
    assert client.get_server_metadata().name == "inferloop"
    meta = client.get_model_metadata(MODEL, as_json=True)
    rest = served.gw.client.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["versions"] == rest["versions"] == [str(served.gw.serving(MODEL))]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == \
        [(t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]]
    multi = client.get_model_metadata(MULTI, as_json=True)
    assert [(t["name"], t["datatype"]) for t in multi["inputs"]] == [("x", "FP32"), ("k", "INT64")]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert not client.is_model_ready(MODEL, model_version="999")  # another version: NOT_FOUND, so not ready
    client.close()


# -- inference -------------------------------------------------------------------------------------
def test_raw_contents_infer_matches_the_model_and_rest(served: Served) -> None:
    rows = rows_of(5)
    client = served.client()
    result = client.infer(MODEL, [raw_input(rows)], request_id="grpc-req-1",
                          headers={"x-request-id": "trace-7"})
    response = result.get_response()
    assert response.model_name == MODEL and response.id == "grpc-req-1"
    assert response.model_version == str(served.gw.serving(MODEL))
    got = result.as_numpy("output")
    np.testing.assert_allclose(got, served.expected(rows), rtol=1e-5, atol=1e-6)
    rest = served.gw.client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
        {"name": "input", "shape": [5, 8], "datatype": "FP32", "data": rows.ravel().tolist()}]}).json()
    np.testing.assert_allclose(got.ravel(), rest["outputs"][0]["data"], rtol=1e-6)
    client.close()


def test_typed_contents_in_typed_contents_out(served: Served) -> None:
    rows = rows_of(3, seed=4)
    request = tpb.ModelInferRequest(model_name=MODEL, id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 8])
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    channel, stub = served.stub()
    response, call = stub.ModelInfer.with_call(request)
    channel.close()
    assert not response.raw_output_contents and response.id == "typed"
    (out,) = response.outputs
    assert out.datatype == "FP32" and list(out.shape) == [3, 1]
    np.testing.assert_allclose(np.array(out.contents.fp32_contents).reshape(3, 1), served.expected(rows), rtol=1e-5,
                               atol=1e-6)
    trailing = dict(call.trailing_metadata())
    assert trailing["x-model-version"] == response.model_version and trailing["x-request-id"] == "typed"


def test_a_multi_input_model_raw_and_typed(served: Served) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    k = np.array([[1], [2], [3]], dtype=np.int64)
    want = x.sum(axis=1, keepdims=True) * k
    client = served.client()
    got = client.infer(MULTI, [raw_input(x, "x"), raw_input(k, "k", "INT64")]).as_numpy("output")
    np.testing.assert_allclose(got, want)
    client.close()
    request = tpb.ModelInferRequest(model_name=MULTI)
    request.inputs.add(name="k", datatype="INT32", shape=[3, 1]).contents.int_contents.extend(k.ravel().tolist())
    request.inputs.add(name="x", datatype="FP64", shape=[3, 4]).contents.fp64_contents.extend(x.ravel().tolist())
    channel, stub = served.stub()
    response = stub.ModelInfer(request)
    channel.close()
    np.testing.assert_allclose(np.array(response.outputs[0].contents.fp32_contents).reshape(3, 1), want)


# -- errors: REST's statuses as gRPC codes, with REST's messages -------------------------------------
def _rest_error(served: Served, model: str, body: dict) -> str:
    r = served.gw.client.post(f"/v2/models/{model}/infer", json=body)
    assert 400 <= r.status_code < 500, r.text
    return r.json()["error"]


@pytest.mark.parametrize("case", ["shape", "datatype", "unknown-input", "integer-range", "missing-input"])
def test_bad_inputs_are_invalid_argument_with_rests_message(served: Served, case: str) -> None:
    model, inputs, rest_inputs = MODEL, [], []
    if case == "shape":
        rows = rows_of(2)[:, :7].copy()
        inputs = [raw_input(rows)]
        rest_inputs = [{"name": "input", "shape": [2, 7], "datatype": "FP32", "data": rows.ravel().tolist()}]
    elif case == "datatype":
        inputs = [raw_input(np.array([["a"] * 8], dtype=object), datatype="BYTES")]
        rest_inputs = [{"name": "input", "shape": [1, 8], "datatype": "BYTES", "data": ["a"] * 8}]
    elif case == "unknown-input":
        model = MULTI
        inputs = [raw_input(np.ones((1, 4), np.float32), "x"), raw_input(np.ones((1, 1), np.int64), "z", "INT64")]
        rest_inputs = [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4},
                       {"name": "z", "shape": [1, 1], "datatype": "INT64", "data": [1]}]
    elif case == "integer-range":
        model = MULTI
        inputs = [raw_input(np.ones((1, 4), np.float32), "x"), raw_input(np.full((1, 1), 300, np.int16), "k", "INT16")]
        inputs[1] = tg.InferInput("k", [1, 1], "INT8")
        inputs[1].set_data_from_numpy(np.full((1, 1), 100, np.int8))
        # through typed contents below instead (raw INT8 cannot hold 300)
    elif case == "missing-input":
        model = MULTI
        inputs = [raw_input(np.ones((1, 4), np.float32), "x")]
        rest_inputs = [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]
    client = served.client()
    if case == "integer-range":
        request = tpb.ModelInferRequest(model_name=MULTI)
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1.0] * 4)
        request.inputs.add(name="k", datatype="INT8", shape=[1, 1]).contents.int_contents.append(300)
        channel, stub = served.stub()
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ModelInfer(request)
        channel.close()
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert rpc.value.details() == _rest_error(served, MULTI, {"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4},
            {"name": "k", "shape": [1, 1], "datatype": "INT8", "data": [300]}]})
    else:
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, inputs)
        status, message = code_and_message(info.value)
        assert status == "StatusCode.INVALID_ARGUMENT"
        assert message == _rest_error(served, model, {"inputs": rest_inputs})
    assert client.infer(MODEL, [raw_input(rows_of(1))]).as_numpy("output").shape == (1, 1)  # still serving
    client.close()


def test_unknown_model_not_found_and_a_raw_size_mismatch(served: Served) -> None:
    client = served.client()
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [raw_input(rows_of(1))])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert info.value.message() == served.gw.client.post("/v2/models/nope/infer", json={}).json()["error"]
    request = tpb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=[2, 8])
    request.raw_input_contents.append(b"\0" * 60)
    channel, stub = served.stub()
    with pytest.raises(grpc.RpcError) as rpc:
        stub.ModelInfer(request)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.value.details() == "input 'input': shape [2, 8] of FP32 needs 64 bytes, raw_input_contents holds 60"
    channel.close()
    client.close()


def test_oversized_and_malformed_messages_and_the_server_stays_healthy(served: Served) -> None:
    channel = grpc.insecure_channel(served.target)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as rpc:
        infer(b"\xff\xff\xff\xff\x0f garbage")
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest" in (rpc.value.details() or "")
    with pytest.raises(grpc.RpcError) as rpc:
        infer(b"\x0a" + b"\x80" * 3 + b"\x01" + b"x" * (MAX_BODY + 1))  # over --max-body-bytes
    assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as rpc:
        channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")(b"")
    assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()
    client = served.client()
    assert client.is_server_ready()
    assert client.infer(MODEL, [raw_input(rows_of(2))]).as_numpy("output").shape == (2, 1)
    client.close()
    text = served.gw.client.get("/metrics").text
    assert 'inferloop_grpc_requests_total{code="INVALID_ARGUMENT",model="_unknown"}' in text
    assert f'inferloop_grpc_requests_total{{code="OK",model="{MODEL}"}}' in text


def test_too_many_rows_is_invalid_argument(served: Served) -> None:
    client = served.client()
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [raw_input(rows_of(MAX_ROWS + 1))])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"exceed the limit of {MAX_ROWS} rows" in info.value.message()
    client.close()


# -- the same data plane: shadow, drift, hot swap ---------------------------------------------------
def test_grpc_traffic_is_mirrored_to_the_shadow_and_watched_for_drift(served: Served) -> None:
    model = served.gw.plane.models[MODEL]
    mirrored_before = model.shadow.mirrored  # type: ignore[attr-defined]
    drift_before = int(model.drift.monitor.total.sum())  # type: ignore[attr-defined]
    client = served.client()
    for i in range(20):
        client.infer(MODEL, [raw_input(rows_of(4, seed=100 + i))])
    client.close()
    # every request is mirrored (sample rate 1): counted per request, by the shadow's report
    eventually(lambda: model.shadow.mirrored >= mirrored_before + 20, 30, "gRPC requests mirrored")  # type: ignore[attr-defined]
    report = served.gw.client.get(f"/admin/models/{MODEL}/shadow", headers=AUTH).json()
    assert report["mirrored"] >= mirrored_before + 20 and report["shadow_version"] == served.versions[1]
    assert int(model.drift.monitor.total.sum()) >= drift_before + 80  # type: ignore[attr-defined]


def test_hot_swap_under_grpc_load_fails_no_rpc(served: Served) -> None:
    v1, v2, v3 = served.versions
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        client = served.client()  # tritonclient's gRPC client: one per thread
        try:
            while not stop.is_set():
                try:
                    result = client.infer(MODEL, [raw_input(rows_of(2))])
                    seen.add(result.get_response().model_version)
                except InferenceServerException as exc:
                    failures.append(str(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        eventually(lambda: bool(seen), 30, "gRPC answers")
        for version in (v3, v1):
            r = served.gw.client.post(f"/admin/models/{MODEL}/promote", json={"version": version}, headers=AUTH)
            assert r.status_code == 200 and r.json()["serving"]["applied"], r.text
            eventually(lambda v=version: str(v) in seen, 30, f"v{version} answering over gRPC")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert {str(v1), str(v3)} <= seen


# -- settings and the listener's life ---------------------------------------------------------------
def test_grpc_is_off_unless_asked_and_the_flag_alone_means_8001() -> None:
    import argparse

    from inferloop.gateway.cli import register_parser

    assert resolve_settings({}, {}).server.grpc_port is None
    parser = argparse.ArgumentParser()
    register_parser(parser.add_subparsers())
    assert resolve_settings(vars(parser.parse_args(["serve", "--grpc-port"])), {}).server.grpc_port == 8001
    assert resolve_settings(vars(parser.parse_args(["serve", "--grpc-port", "9001"])), {}).server.grpc_port == 9001
    assert resolve_settings({}, {"INFERLOOP_GRPC_PORT": "7001"}).server.grpc_port == 7001


def test_an_rpc_in_flight_at_shutdown_is_answered(tmp_path: Path) -> None:
    from .test_gateway_batching import device_busy

    uri = f"file://{tmp_path / 'r'}"
    with Registry.open(uri) as reg:
        version = register_tiny(reg, MODEL, seed=1)
        reg.promote(MODEL, version, "production")
    gw = ThreadedGateway(settings_for(uri, [MODEL], tmp_path, server={"grpc_port": 0}))
    with gw:
        gw.wait_serving(MODEL, version)
        target = f"127.0.0.1:{gw.app.state.grpc.port}"
        batcher = gw.plane.models[MODEL].batcher
        answer: list[object] = []

        def call() -> None:
            client = tg.InferenceServerClient(target)
            try:
                answer.append(client.infer(MODEL, [raw_input(rows_of(1))]).as_numpy("output"))
            except InferenceServerException as exc:
                answer.append(exc)
            client.close()

        with device_busy(batcher):
            caller = threading.Thread(target=call)
            caller.start()
            eventually(lambda: batcher.queued_requests + batcher.in_flight == 1, 30, "the RPC queued")
            gw.server.should_exit = True  # shutdown begins while the RPC waits for the device
            eventually(lambda: not gw.app.state.grpc.service.accepting, 30, "gRPC draining")
        caller.join(30)
    assert len(answer) == 1 and isinstance(answer[0], np.ndarray), answer


# -- keepalive enforcement and streams per connection -----------------------------------------------
LIMITED_STREAMS = 2


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A gateway of its own (the tests below hold its device busy): 2 streams per connection, the
    default keepalive settings (the server pings after 60 s idle, clients may ping every 10 s)."""
    tmp = tmp_path_factory.mktemp("gateway-grpc-limits")
    uri = f"file://{tmp / 'registry'}"
    with Registry.open(uri) as reg:
        version = register_tiny(reg, MODEL, seed=1)
        reg.promote(MODEL, version, "production")
        module = reg.load_model(MODEL, version)
    settings = settings_for(uri, [MODEL], tmp, server={"grpc_port": 0, "grpc_max_streams": LIMITED_STREAMS})
    assert settings.server.grpc_min_ping_interval_s == 10.0
    with ThreadedGateway(settings) as gw:
        gw.wait_serving(MODEL, version)
        yield Served(gw, module, [version])


def infer_request(rows: np.ndarray) -> tpb.ModelInferRequest:
    request = tpb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype("<f4").tobytes())
    return request


def test_a_client_pinging_too_often_gets_goaway_and_the_others_are_served(limited: Served) -> None:
    """grpc's own client, told to ping every 100 ms with no limit on pings without data, while its
    RPC waits for a busy device (the server sends nothing meanwhile, so every ping inside
    --grpc-min-ping-interval counts): past 2 such strikes the server sends GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings") and
    closes that connection, failing its RPC with UNAVAILABLE. A polite client is served before,
    during (its RPC waits for the same device) and after."""
    from .test_gateway_batching import device_busy

    rows = rows_of(2)
    batcher = limited.gw.plane.models[MODEL].batcher
    rude = grpc.insecure_channel(limited.target, options=[
        ("grpc.keepalive_time_ms", 100), ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)])
    polite = grpc.insecure_channel(limited.target, options=[("grpc.use_local_subchannel_pool", 1)])
    polite_stub = tgrpc.GRPCInferenceServiceStub(polite)
    try:
        rude_stub = tgrpc.GRPCInferenceServiceStub(rude)
        assert rude_stub.ServerLive(tpb.ServerLiveRequest(), timeout=30).live  # connected, pinging
        assert polite_stub.ServerLive(tpb.ServerLiveRequest(), timeout=30).live
        with device_busy(batcher):
            rude_call = rude_stub.ModelInfer.future(infer_request(rows), timeout=60)
            polite_call = polite_stub.ModelInfer.future(infer_request(rows), timeout=60)
            with pytest.raises(grpc.RpcError) as closed:
                rude_call.result(60)  # fails while the device is still busy: the connection went
        assert closed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "too many pings" in (closed.value.details() or "").lower(), closed.value.details()
        answer = polite_call.result(60)
        assert np.allclose(np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(-1, 1),
                           limited.expected(rows), atol=1e-5)
        again = polite_stub.ModelInfer(infer_request(rows), timeout=30)  # same connection, still open
        assert np.frombuffer(again.raw_output_contents[0], "<f4").shape == (2,)
    finally:
        rude.close()
        polite.close()


def test_streams_per_connection_are_capped_and_the_rest_wait(limited: Served) -> None:
    """--grpc-max-streams 2: of 6 RPCs sent at once on one connection while the device is busy, 2
    reach the gateway and 4 wait in the client for a free stream; another connection gets its own 2.
    Once the device frees, the 4 at the gateway are answered; of those waiting in the client, grpc
    core may refuse some (RST_STREAM REFUSED_STREAM, UNAVAILABLE: the client opens the next stream
    before the server has retired the last; seen with two connections, never with one), which a
    client may retry as never processed. Anything else fails, and the server serves on."""
    from .test_gateway_batching import device_busy

    batcher = limited.gw.plane.models[MODEL].batcher

    def waiting() -> int:
        return int(batcher.queued_requests + batcher.in_flight)

    def connection() -> tuple[grpc.Channel, tgrpc.GRPCInferenceServiceStub]:
        # a subchannel pool of its own: two channels to one target share a connection otherwise
        channel = grpc.insecure_channel(limited.target, options=[("grpc.use_local_subchannel_pool", 1)])
        return channel, tgrpc.GRPCInferenceServiceStub(channel)

    first, first_stub = connection()
    second, second_stub = connection()
    try:
        for stub in (first_stub, second_stub):
            assert stub.ServerLive(tpb.ServerLiveRequest(), timeout=30).live
        with device_busy(batcher):
            calls = [first_stub.ModelInfer.future(infer_request(rows_of(1, seed=i)), timeout=60) for i in range(6)]
            eventually(lambda: waiting() == LIMITED_STREAMS, 30, "2 RPCs of the first connection at the gateway")
            calls += [second_stub.ModelInfer.future(infer_request(rows_of(1, seed=i)), timeout=60)
                      for i in range(6, 8)]
            eventually(lambda: waiting() == 2 * LIMITED_STREAMS, 30, "the second connection's 2 RPCs too")
            threading.Event().wait(0.5)  # room for any RPC beyond the cap to arrive (none may)
            assert waiting() == 2 * LIMITED_STREAMS
            assert not any(call.done() for call in calls)
        answered = 0
        for i, call in enumerate(calls):
            try:
                out = np.frombuffer(call.result(60).raw_output_contents[0], "<f4").reshape(-1, 1)
            except grpc.RpcError as exc:  # refused before it reached the gateway, nothing else
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and "error code 7" in (exc.details() or ""), exc
                continue
            assert np.allclose(out, limited.expected(rows_of(1, seed=i)), atol=1e-5)
            answered += 1
        assert answered >= 2 * LIMITED_STREAMS
        for stub in (first_stub, second_stub):
            assert stub.ModelInfer(infer_request(rows_of(1)), timeout=30).raw_output_contents
    finally:
        first.close()
        second.close()
