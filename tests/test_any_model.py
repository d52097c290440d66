"""Models nobody here wrote, through the registry, the gateway and shadow: any torch.nn.Module as a
torch.export program, multi-tensor signatures, and ONNX (a scikit-learn gradient-boosted model).
The three examples' examples/models/<name>/model.py are the fixtures. Real registry, real uvicorn,
tritonclient."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton

from inferloop.registry import Registry, UnsupportedArtifact
from inferloop.registry.exported import export_program

from .gateway_harness import AUTH, ThreadedGateway, eventually, settings_for

ROOT = Path(__file__).resolve().parents[1]


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / "models" / name / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABULAR, CNN, GBM = example("tabular_embeddings"), example("cnn1d"), example("sklearn_gbm_onnx")


# -- the artifact ---------------------------------------------------------------------------------
def test_exporting_the_same_module_twice_gives_the_same_bytes_and_one_version(tmp_path: Path) -> None:
    """Observed: two exports of one module are byte-identical (content addressing holds), and
    registering it twice returns the same version."""
    model, x = TABULAR.build(1), TABULAR.example_inputs(16, 1)
    first, *_ = export_program(model, x)
    second, *_ = export_program(model, x)
    assert first == second
    with Registry.open(f"file://{tmp_path / 'r'}") as reg:
        assert TABULAR.register(reg, "t", seed=1) == TABULAR.register(reg, "t", seed=1) == 1


USER_SCRIPT = '''
import sys, numpy as np, torch
from torch import nn
from inferloop.registry import Registry

class OnlyInThisScript(nn.Module):  # lives in __main__: nobody else can import it
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(5, 12), nn.LayerNorm(12), nn.Linear(12, 2)
    def forward(self, x):
        return self.b(self.norm(torch.tanh(self.a(x)))) + x[:, :2]

torch.manual_seed(3)
model = OnlyInThisScript().eval()
x = torch.randn(300, 5)
with Registry.open(sys.argv[1]) as reg, reg.track("user-model") as run:
    version = run.register(model, example_inputs=x[:4])
with torch.no_grad():
    np.savez(sys.argv[2], x=x.numpy(), y=model(x).numpy(), version=version)
'''


def test_a_class_defined_in_a_scripts_main_is_served_without_it(tmp_path: Path) -> None:
    """Observed: a model whose class exists only in a script's `__main__` is registered by that script;
    this process (which cannot import the class) loads it through the registry and a gateway serves
    it, matching the script's eager outputs at batch sizes 1, 5 and 300 (1e-5)."""
    uri, out = f"file://{tmp_path / 'r'}", tmp_path / "expected.npz"
    script = tmp_path / "train.py"
    script.write_text(USER_SCRIPT)
    done = subprocess.run([sys.executable, "-P", str(script), uri, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OnlyInThisScript" not in sys.modules.get("__main__").__dict__  # type: ignore[union-attr]
    expected = np.load(out)
    x, y, version = expected["x"], expected["y"], int(expected["version"])
    with Registry.open(uri) as reg:
        runnable = reg.load_runnable("user-model", version)
        for n in (1, 5, 300):
            np.testing.assert_allclose(runnable.run([x[:n]])[0], y[:n], atol=1e-5)
        reg.promote("user-model", version, "production")
    with ThreadedGateway(settings_for(uri, ["user-model"], tmp_path)) as gw:
        gw.wait_serving("user-model", version)
        r = gw.client.post("/v2/models/user-model/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [300, 5], "data": x.ravel().tolist()}]})
        assert r.status_code == 200, r.text
        (output,) = r.json()["outputs"]
        np.testing.assert_allclose(np.array(output["data"]).reshape(300, 2), y, atol=1e-5)


class DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # Python control flow on a value: torch.export cannot capture it
            return x * 2
        return x


def test_a_module_torch_export_cannot_capture_is_refused_in_one_line(tmp_path: Path) -> None:
    with Registry.open(f"file://{tmp_path / 'r'}") as reg:
        with pytest.raises(UnsupportedArtifact) as info, reg.track("dd") as run:
            run.register(DataDependent(), example_inputs=torch.ones(4, 3))
        message = str(info.value)
        assert "torch.export cannot capture DataDependent" in message and "docs/models.md" in message
        assert "\n" not in message
        assert reg.list_versions("dd") == []


def test_onnx_models_that_reach_outside_their_bytes_are_refused() -> None:
    """Observed: an ONNX model with an initializer stored as external data, and one using an operator
    of a custom domain, are refused before onnxruntime sees them."""
    import onnx
    from onnx import TensorProto, helper

    from inferloop.registry.onnx_artifact import parse_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    weight.external_data.add(key="location", value="../../etc/passwd")
    external = helper.make_model(helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y],
                                                   [weight]))
    with pytest.raises(UnsupportedArtifact, match="external file"):
        parse_model(external.SerializeToString())
    custom = helper.make_model(helper.make_graph([helper.make_node("Evil", ["x"], ["y"], domain="com.evil")], "g",
                                                 [x], [y]),
                               opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    with pytest.raises(UnsupportedArtifact, match="com.evil"):
        parse_model(custom.SerializeToString())
    assert onnx.checker is not None


# -- serving the examples -------------------------------------------------------------------------
def _local(name: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's own forward, outside inferloop."""
    if name == "store-revenue":
        with torch.no_grad():
            out = TABULAR.build(0)({"store_id": torch.from_numpy(inputs[0]), "dense": torch.from_numpy(inputs[1])})
        return [out.numpy()]
    if name == "sequence-classifier":
        with torch.no_grad():
            return [CNN.build(0)(torch.from_numpy(inputs[0])).numpy()]
    clf, _ = GBM.build(0)
    return [clf.predict(inputs[0]), clf.predict_proba(inputs[0]).astype(np.float32)]


def _inputs(name: str, rows: int, seed: int) -> list[np.ndarray]:
    if name == "store-revenue":
        x = TABULAR.example_inputs(rows, seed)
        return [x["store_id"].numpy(), x["dense"].numpy()]
    if name == "sequence-classifier":
        return [CNN.example_inputs(rows, seed).numpy()]
    return [GBM.data(rows, seed)[0]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - (gateway, versions)
    tmp = tmp_path_factory.mktemp("any-model")
    uri = f"file://{tmp / 'registry'}"
    versions = {}
    with Registry.open(uri) as reg:
        for module, name in ((TABULAR, "store-revenue"), (CNN, "sequence-classifier"), (GBM, "churn-gbm")):
            versions[name] = module.register(reg, name)
            reg.promote(name, versions[name], "production")
    with ThreadedGateway(settings_for(uri, list(versions), tmp)) as gw:
        for name, version in versions.items():
            gw.wait_serving(name, version)
        yield gw, versions


@pytest.mark.parametrize("name", ["store-revenue", "sequence-classifier", "churn-gbm"])
@pytest.mark.parametrize("binary", [False, True])
def test_examples_answer_tritonclient_like_their_own_forward(served, name: str, binary: bool) -> None:
    """Observed: tritonclient (JSON and binary tensors) gets the outputs of the model's own forward
    (sklearn's predict / predict_proba for the ONNX model) at 1e-5, with the version that served."""
    gw, versions = served
    client = triton.InferenceServerClient(gw.url.removeprefix("http://"))
    meta = client.get_model_metadata(name)
    inputs = _inputs(name, 37, seed=5)
    wire = []
    for spec, values in zip(meta["inputs"], inputs, strict=True):
        tensor = triton.InferInput(spec["name"], list(values.shape), spec["datatype"])
        tensor.set_data_from_numpy(values, binary_data=binary)
        wire.append(tensor)
    outputs = [triton.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]]
    result = client.infer(name, wire, outputs=outputs)
    assert result.get_response()["model_version"] == str(versions[name])
    for spec, expected in zip(meta["outputs"], _local(name, inputs), strict=True):
        got = result.as_numpy(spec["name"])
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_metadata_reports_the_signature(served) -> None:
    gw, _ = served
    meta = gw.client.get("/v2/models/store-revenue").json()
    assert meta["inputs"] == [{"name": "store_id", "datatype": "INT64", "shape": [-1]},
                              {"name": "dense", "datatype": "FP32", "shape": [-1, 8]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}]
    gbm = gw.client.get("/v2/models/churn-gbm").json()
    assert [o["name"] for o in gbm["outputs"]] == ["label", "probabilities"] and gbm["platform"] == "onnxruntime_onnx"


def _tensor(name: str, datatype: str, values: np.ndarray) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(values.shape), "data": values.ravel().tolist()}


def test_the_outputs_field_selects_outputs_by_name(served) -> None:
    gw, _ = served
    x = _inputs("churn-gbm", 4, seed=2)[0]
    r = gw.client.post("/v2/models/churn-gbm/infer", json={"inputs": [_tensor("features", "FP32", x)],
                                                           "outputs": [{"name": "probabilities"}]})
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["probabilities"]


@pytest.mark.parametrize(("inputs", "words"), [
    ([_tensor("store_id", "FP32", np.zeros(2, np.float32)), _tensor("dense", "FP32", np.zeros((2, 8), np.float32))],
     "input 'store_id' has datatype 'FP32'; this model takes INT64"),
    ([_tensor("store_id", "INT64", np.zeros(2, np.int64)), _tensor("dense", "FP32", np.zeros((2, 7), np.float32))],
     "input 'dense' has shape [2, 7]; this model takes [-1, 8]"),
    ([_tensor("dense", "FP32", np.zeros((2, 8), np.float32))], "missing input(s) store_id"),
    ([_tensor("store_id", "INT64", np.zeros(2, np.int64)), _tensor("dense", "FP32", np.zeros((2, 8), np.float32)),
      _tensor("extra", "FP32", np.zeros(2, np.float32))], "unknown input 'extra'"),
    ([_tensor("store_id", "INT64", np.zeros(3, np.int64)), _tensor("dense", "FP32", np.zeros((2, 8), np.float32))],
     "different batch sizes"),
    ([_tensor("store_id", "INT64", np.full(2, 2.0**40)), _tensor("dense", "FP32", np.zeros((2, 8), np.float32))],
     None),
])
def test_requests_that_do_not_fit_the_signature_get_a_400_that_names_the_input(served, inputs, words) -> None:
    gw, _ = served
    r = gw.client.post("/v2/models/store-revenue/infer", json={"inputs": inputs})
    if words is None:  # an id outside the embedding table: the model refuses it, a 400 with torch's reason
        assert r.status_code == 400 and "refused this request's inputs" in r.json()["error"], r.text
        return
    assert r.status_code == 400 and words in r.json()["error"], r.text
    v1 = gw.client.post("/v1/models/store-revenue/predict", json={"instances": [[0.0] * 8]})
    assert v1.status_code == 400 and "use POST /v2/models/{name}/infer" in v1.json()["error"]


def test_a_request_the_model_refuses_on_the_event_loop_fails_alone(tmp_path: Path) -> None:
    """Observed: once a sequential client's forwards run on the event loop, an id outside the
    embedding table still gets a 400 with the model's reason (the forward raised on the loop, not on
    the device thread), and the next requests are answered as before, still on the loop."""
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        version = TABULAR.register(reg, "store-revenue")
        reg.promote("store-revenue", version, "production")
    good = {"inputs": [_tensor("store_id", "INT64", np.array([11])), _tensor("dense", "FP32", np.zeros((1, 8), np.float32))]}
    bad = {"inputs": [_tensor("store_id", "INT64", np.array([2**40])), _tensor("dense", "FP32", np.zeros((1, 8), np.float32))]}
    settings = settings_for(uri, ["store-revenue"], tmp_path, batching={"inline_max_ms": 1000.0})
    with ThreadedGateway(settings) as gw:
        gw.wait_serving("store-revenue", version)
        for _ in range(12):
            assert gw.client.post("/v2/models/store-revenue/infer", json=good).status_code == 200
        before = gw.status("store-revenue")["batching"]["forwards"]
        refused = gw.client.post("/v2/models/store-revenue/infer", json=bad)
        after = [gw.client.post("/v2/models/store-revenue/infer", json=good) for _ in range(3)]
        forwards = gw.status("store-revenue")["batching"]["forwards"]
    assert before["inline"] > 0
    assert refused.status_code == 400 and "refused this request's inputs" in refused.json()["error"], refused.text
    assert all(r.status_code == 200 for r in after)
    assert forwards == {"inline": before["inline"] + 4, "device_thread": before["device_thread"]}


class SequenceMean(torch.nn.Module):
    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values.mean(dim=1, keepdim=True)


def test_a_model_with_a_dynamic_sequence_axis_never_runs_on_the_event_loop(tmp_path: Path) -> None:
    """Observed: even with an inline budget nothing could exceed, a sequential client's requests to a
    model whose rows have a dynamic length all run on the device thread: the cost fit predicts from
    rows, and one row of any length (a client's choice) must not stall the event loop."""
    uri = f"file://{tmp_path / 'registry'}"
    values = torch.randn(64, 5)
    with Registry.open(uri) as reg:
        with reg.track("seq-mean") as run:
            version = run.register(SequenceMean(), example_inputs=values[:8], reference=values, output_kind="none",
                                   dynamic_axes={"values": [1]})
        reg.promote("seq-mean", version, "production")
    settings = settings_for(uri, ["seq-mean"], tmp_path, batching={"inline_max_ms": 1000.0})
    with ThreadedGateway(settings) as gw:
        gw.wait_serving("seq-mean", version)
        for length in [5] * 15 + [3, 400]:
            body = {"inputs": [_tensor("values", "FP32", np.ones((1, length), np.float32))]}
            r = gw.client.post("/v2/models/seq-mean/infer", json=body)
            assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1.0], r.text
        forwards = gw.status("seq-mean")["batching"]["forwards"]
    assert forwards == {"inline": 0, "device_thread": 17}


# -- hot swap and shadow across architectures -----------------------------------------------------
def test_hot_swap_and_shadow_across_architectures_under_load(tmp_path: Path) -> None:
    """Observed: production moves from a residual MLP (torch.export) to the built-in MLP (safetensors)
    to a plain nn.Sequential under load from 4 clients: 0 failed requests; a shadow of another
    architecture with the same signature is mirrored and compared."""
    from .helpers import register_tiny

    class Residual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.norm, self.o = torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1)

        def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the wire name of the input
            h = torch.relu(self.a(input))
            return self.o(self.norm(h + h))

    uri = f"file://{tmp_path / 'r'}"
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    with Registry.open(uri) as reg:
        with reg.track("m") as run:
            v1 = run.register(Residual(), example_inputs=x[:8], reference=x)
        v2 = register_tiny(reg, "m", seed=2)
        with reg.track("m") as run:
            seq = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
            v3 = run.register(seq, example_inputs=x[:8])
        reg.promote("m", v1, "production")
        reg.promote("m", v3, "shadow")
    failures: list[str] = []
    served_by: set[str] = set()
    stop = threading.Event()
    with ThreadedGateway(settings_for(uri, ["m"], tmp_path, shadow={"budget": 1.0})) as gw:
        gw.wait_serving("m", v1)

        def load() -> None:
            with httpx.Client(base_url=gw.url, timeout=30) as client:
                while not stop.is_set():
                    r = client.post("/v2/models/m/infer", json={"inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [2, 8], "data": [0.5] * 16}]})
                    if r.status_code != 200:
                        failures.append(r.text)
                    served_by.add(r.headers.get("x-model-version", "?"))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            eventually(lambda: str(v1) in served_by, 30, "v1 answering")
            for version in (v2, v3):
                r = gw.client.post("/admin/models/m/promote", json={"version": version}, headers=AUTH)
                assert r.status_code == 200 and r.json()["serving"]["applied"], r.text
                eventually(lambda v=version: str(v) in served_by, 30, f"v{version} answering")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        shadow = gw.plane.models["m"].shadow
    assert failures == []
    assert {str(v1), str(v2), str(v3)} <= served_by
    assert shadow.mirrored > 0  # type: ignore[attr-defined]


def test_drift_watches_a_non_tabular_model_by_row_summaries_and_its_output(tmp_path: Path) -> None:
    """Observed: the 1-D CNN example's drift columns are its input's row mean and norm and its first
    output; a window of unshifted sequences stays below the trip level, a window shifted by +2 lifts
    the summaries' PSI far above it (drift state from the admin endpoint)."""
    uri = f"file://{tmp_path / 'r'}"
    with Registry.open(uri) as reg:
        version = CNN.register(reg, "seq")
        reg.promote("seq", version, "production")
    with ThreadedGateway(settings_for(uri, ["seq"], tmp_path, drift={"evaluate_interval_s": 0.1})) as gw:
        gw.wait_serving("seq", version)

        def window(shift: float, seed: int) -> dict:
            before = gw.client.get("/admin/models/seq/drift", headers=AUTH).json()["windows"]
            for i in range(10):
                x = CNN.example_inputs(100, seed * 100 + i).numpy() + shift
                r = gw.client.post("/v2/models/seq/infer", json={"inputs": [_tensor("sequence", "FP32", x)]})
                assert r.status_code == 200, r.text
            state = eventually(lambda: (s := gw.client.get("/admin/models/seq/drift", headers=AUTH).json())
                               ["windows"] > before and s, 30, "a closed window")
            return {f["feature"]: f for f in state["last_window"]["features"]}

        calm, shifted = window(0.0, 7), window(2.0, 8)
    assert list(calm) == ["sequence:mean", "sequence:norm", "output:output"]
    assert all(f["psi"] < max(0.1, f.get("critical", 0.1)) for f in calm.values()), calm
    assert shifted["sequence:mean"]["psi"] > 1.0 and shifted["sequence:norm"]["psi"] > 1.0


class MaskedSequence(torch.nn.Module):
    """Takes a variable-length FP16 sequence and a BOOL mask of the same length: a masked mean."""

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(torch.float32)
        return (values.to(torch.float32) * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)


def test_bool_and_fp16_inputs_with_a_dynamic_axis_batch_by_shape(tmp_path: Path) -> None:
    """Observed: a model with an FP16 input and a BOOL mask whose axis 1 is dynamic takes requests of
    lengths 3 and 5 at the same time (held behind a busy device so they share one queue): each gets
    its own masked mean (requests of different lengths ran as separate batches), over JSON and binary."""
    from .test_gateway_batching import device_busy

    uri = f"file://{tmp_path / 'r'}"
    example = (torch.randn(4, 3).half(), torch.ones(4, 3, dtype=torch.bool))
    with Registry.open(uri) as reg:
        with reg.track("masked") as run:
            version = run.register(MaskedSequence(), example_inputs=example, output_kind="none",
                                   dynamic_axes={"values": [1], "mask": [1]})
        reg.promote("masked", version, "production")
    with ThreadedGateway(settings_for(uri, ["masked"], tmp_path)) as gw:
        gw.wait_serving("masked", version)
        meta = gw.client.get("/v2/models/masked").json()
        assert meta["inputs"] == [{"name": "values", "datatype": "FP16", "shape": [-1, -1]},
                                  {"name": "mask", "datatype": "BOOL", "shape": [-1, -1]}]
        cases = []
        for length, binary in ((3, False), (5, True), (3, True), (5, False)):
            values = np.arange(2 * length, dtype=np.float16).reshape(2, length)
            mask = np.zeros((2, length), dtype=bool)
            mask[:, :2] = True
            cases.append((values, mask, binary))
        results: list = [None] * len(cases)

        def send(i: int) -> None:
            values, mask, binary = cases[i]
            v = triton.InferInput("values", list(values.shape), "FP16")
            v.set_data_from_numpy(values, binary_data=binary)
            m = triton.InferInput("mask", list(mask.shape), "BOOL")
            m.set_data_from_numpy(mask, binary_data=binary)
            client = triton.InferenceServerClient(gw.url.removeprefix("http://"))  # one connection each
            results[i] = client.infer("masked", [v, m]).as_numpy("output")

        batcher = gw.plane.models["masked"].batcher
        sizes: list[int] = []
        gw.plane.observe("masked", type("Sizes", (), {"on_batch": lambda _self, b: sizes.append(len(b.inputs))})())
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(cases))]
        with device_busy(batcher):
            # the first request alone takes the (held) device; the rest queue behind it together. Sent
            # all at once, two could share the first batch, and that batch would then be split by shape
            threads[0].start()
            eventually(lambda: batcher.in_flight == 1, 30, "the first request on the device")
            for t in threads[1:]:
                t.start()
            eventually(lambda: batcher.queued_requests == len(cases) - 1, 30, "the rest queued")
        for t in threads:
            t.join(30)
    for (values, _mask, _), got in zip(cases, results, strict=True):
        np.testing.assert_allclose(got[:, 0], values[:, :2].astype(np.float32).mean(axis=1), rtol=1e-3)
    # the one that waited for the device, then one batch per length (never a failed mixed batch re-run alone)
    assert sorted(sizes) == [2, 2, 4]


class _Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.out = torch.nn.Linear(16, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.layer(tokens).mean(dim=1))


class _Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.out = torch.nn.GRU(4, 8, batch_first=True), torch.nn.Linear(8, 1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.out(self.gru(seq)[0][:, -1])


@pytest.mark.parametrize(("module", "x"), [(_Encoder, (3, 5, 16)), (_Recurrent, (3, 7, 4))])
def test_a_transformer_layer_and_a_gru_pass_the_archive_check(tmp_path: Path, module, x) -> None:
    """Observed (tried as a user would): a TransformerEncoderLayer and a GRU export with arithmetic on
    symbolic sizes (`_operator.mul`, sympy `Mul`/`Integer`); the allow-list takes those harmless forms,
    and the loaded program matches eager."""
    model, inputs = module().eval(), torch.randn(*x)
    with Registry.open(f"file://{tmp_path / 'r'}") as reg:
        with reg.track("m") as run:
            version = run.register(model, example_inputs=inputs)
        out = reg.load_runnable("m", version).run([inputs.numpy()])[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(inputs).numpy(), atol=1e-5)


def test_an_onnx_model_has_one_digest_whatever_its_opset_order(tmp_path: Path) -> None:
    """skl2onnx lists its opset imports in hash-seed order: the same model must still register once."""
    import onnx

    _, model = GBM.build()
    reordered = onnx.ModelProto.FromString(model.SerializeToString())
    opsets = list(reordered.opset_import)[::-1]
    del reordered.opset_import[:]
    reordered.opset_import.extend(opsets)
    assert len(opsets) > 1 and reordered.SerializeToString() != model.SerializeToString()
    x = np.zeros((4, 6), np.float32)
    with Registry.open(f"file://{tmp_path / 'r'}") as reg:
        with reg.track("gbm") as run:
            first = run.register(model, example_inputs=x, output_kind="multiclass")
        with reg.track("gbm") as run:
            second = run.register(reordered, example_inputs=x, output_kind="multiclass")
            assert not run.created
    assert first == second == 1
