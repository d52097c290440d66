"""Shadow traffic through a real gateway (uvicorn on 127.0.0.1, real registry): joined records,
a report of the live pair, shadows that raise or return non-finite values, the compute budget,
run-time sampling, and promotion on evidence."""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from inferloop.gateway.settings import GatewaySettings
from inferloop.registry import MLP, Registry

from .gateway_harness import AUTH, ThreadedGateway, eventually, infer_body, settings_for
from .helpers import register_tiny


def _rows(n: int, seed: int = 0, width: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


def _send(gw: ThreadedGateway, rows: np.ndarray, prefix: str, threads: int = 8) -> dict[str, list[float]]:
    def one(i: int) -> tuple[str, list[float]]:
        rid = f"{prefix}-{i}"
        r = gw.client.post("/v2/models/m/infer", json=infer_body([rows[i].tolist()], rid),
                           headers={"x-request-id": rid})
        assert r.status_code == 200, r.text
        return rid, r.json()["outputs"][0]["data"]

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, range(len(rows))))


def _wait_shadow(gw: ThreadedGateway, version: int) -> None:
    """The gateway is ready and the shadow stage serves `version`."""
    gw.wait_ready()
    eventually(lambda: gw.plane.models["m"].stages["shadow"].serving_version == version, what="shadow loaded")


def _register_nan_on_live_inputs(reg: Registry) -> int:
    """Finite on the all-zero warm-up rows (so it loads), non-finite on real inputs."""
    model = MLP(8, 1, [16])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.0)
        model.net[0].weight[:8].fill_(3e38)  # half the units see +sum(x), half -sum(x): one side is +inf
        model.net[0].weight[8:].fill_(-3e38)
        model.net[2].weight.fill_(3e38)
    with reg.track("m") as run:
        return run.register(model, example_inputs=torch.zeros(4, 8), reference=torch.zeros(64, 8))


class _Picky(torch.nn.Module):
    """Answers like a regression head, but raises on inputs with any |value| above 5."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 1)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the input's name on the wire
        torch._assert_async(input.abs().max() <= 5.0, "input out of range")
        return self.lin(input)


@pytest.fixture
def registry_with_pair(tmp_path):
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        v1, v2 = register_tiny(reg, "m", 1), register_tiny(reg, "m", 2)
        reg.promote("m", v1, "production")
        reg.promote("m", v2, "shadow")
        shadow_model = reg.load_model("m", v2)
        primary_model = reg.load_model("m", v1)
    return uri, primary_model, shadow_model


def test_every_mirrored_request_gives_one_joined_record(registry_with_pair, tmp_path) -> None:
    uri, primary_model, shadow_model = registry_with_pair
    logdir = tmp_path / "predictions"
    settings = settings_for(uri, ["m"], tmp_path, shadow={"budget": 1.0, "prediction_log": str(logdir)})
    rows = _rows(300)
    with ThreadedGateway(settings) as gw:
        _wait_shadow(gw, 2)
        answers = _send(gw, rows, "req")
        mirror = gw.plane.models["m"].shadow
        eventually(lambda: mirror.mirrored == 300, what="all mirrored")
        report = gw.client.get("/admin/models/m/shadow", headers=AUTH).json()
        metrics = gw.client.get("/metrics").text
    assert report["primary_version"] == 1 and report["shadow_version"] == 2
    assert report["report"]["compared"] == 300 and report["dropped"] == {} and report["errors"] == {}
    assert 'inferloop_inference_duration_seconds_count{model="m",role="shadow"}' in metrics
    records = [json.loads(line) for f in logdir.rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["request_id"] for r in records) == sorted(answers)  # exactly one per mirrored request
    with torch.inference_mode():
        for r in records:
            assert r["mirrored"] and r["primary_version"] == 1 and r["shadow_version"] == 2
            x = torch.tensor(r["inputs"])
            assert r["primary_output"][0][0] == pytest.approx(answers[r["request_id"]][0], abs=1e-6)
            assert r["primary_output"][0][0] == pytest.approx(float(primary_model(x)[0, 0]), abs=1e-5)
            assert r["shadow_output"][0][0] == pytest.approx(float(shadow_model(x)[0, 0]), abs=1e-5)


@pytest.mark.parametrize("kind", ["raises", "non_finite"])
def test_a_failing_shadow_changes_no_primary_response(tmp_path, kind) -> None:
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        v1 = register_tiny(reg, "m", 1)
        reg.promote("m", v1, "production")
        primary_model = reg.load_model("m", v1)
        if kind == "raises":  # same signature; refuses |values| > 5: every mirrored batch raises in the forward
            with reg.track("m") as run:
                bad = run.register(_Picky(), example_inputs=torch.zeros(4, 8))
        else:
            bad = _register_nan_on_live_inputs(reg)
        reg.promote("m", bad, "shadow")
    rows = _rows(200, seed=3) * 10
    settings = settings_for(uri, ["m"], tmp_path, shadow={"budget": 1.0})
    with ThreadedGateway(settings) as gw:
        _wait_shadow(gw, bad)
        answers = _send(gw, rows, kind)
        mirror = gw.plane.models["m"].shadow
        reason = "exception" if kind == "raises" else "non_finite"
        eventually(lambda: mirror.errors.get(reason, 0) == 200, what="errors counted")
        metrics = gw.client.get("/metrics").text
    assert f'inferloop_shadow_errors_total{{model="m",reason="{reason}"}} 200.0' in metrics
    with torch.inference_mode():
        expected = primary_model(torch.from_numpy(rows)).numpy()[:, 0]
    got = np.array([answers[f"{kind}-{i}"][0] for i in range(200)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_shadow_with_another_signature_is_refused_and_production_is_untouched(tmp_path) -> None:
    """Observed: a shadow that takes 9 features beside a production that takes 8 gets none of the
    mirrored requests (all dropped as `signature_mismatch`, counted in the metric, and one
    `shadow_evaluated` audit event with verdict `refused`); production answers all 100 requests
    unchanged."""
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        v1 = register_tiny(reg, "m", 1)
        reg.promote("m", v1, "production")
        reg.promote("m", register_tiny(reg, "m", 5, in_features=9), "shadow")
    with ThreadedGateway(settings_for(uri, ["m"], tmp_path, shadow={"budget": 1.0})) as gw:
        _wait_shadow(gw, 2)
        answers = _send(gw, _rows(100, seed=6), "sig")
        mirror = gw.plane.models["m"].shadow
        eventually(lambda: mirror.dropped.get("signature_mismatch", 0) == 100, what="all dropped")
        metrics = gw.client.get("/metrics").text
    assert len(answers) == 100 and mirror.mirrored == 0 and not mirror.errors.get("exception")
    assert 'inferloop_shadow_dropped_total{model="m",reason="signature_mismatch"} 100.0' in metrics
    with Registry.open(uri) as reg:
        (event,) = reg.history("m", kinds={"shadow_evaluated"})
    assert event.version == 2 and event.stage == "shadow" and event.details["verdict"] == "refused"
    assert event.details["cause"] == "signature_mismatch" and event.details["production_version"] == 1
    assert event.details["shadow_inputs"] == [["input", "FP32", [-1, 9]]]


def test_budget_drops_and_counts_instead_of_slowing_the_primary(registry_with_pair, tmp_path) -> None:
    uri, _, _ = registry_with_pair
    settings = settings_for(uri, ["m"], tmp_path, shadow={"budget": 0.001})
    with ThreadedGateway(settings) as gw:
        _wait_shadow(gw, 2)
        mirror = gw.plane.models["m"].shadow
        mirror.budget.burst_s = 0.0  # no allowance: the budget alone decides
        _send(gw, _rows(300, seed=4), "b")
        eventually(lambda: mirror.mirrored + sum(mirror.dropped.values()) == 300, what="all accounted")
    assert mirror.dropped.get("budget", 0) > 0


def test_sampling_is_deterministic_by_request_id_and_changeable_at_run_time(registry_with_pair, tmp_path) -> None:
    uri, _, _ = registry_with_pair
    logdir = tmp_path / "predictions"
    settings = settings_for(uri, ["m"], tmp_path, shadow={"budget": 1.0, "prediction_log": str(logdir)})
    with ThreadedGateway(settings) as gw:
        _wait_shadow(gw, 2)
        r = gw.client.post("/admin/models/m/shadow", json={"sample_rate": 0.5}, headers=AUTH)
        assert r.status_code == 200 and r.json()["sample_rate"] == 0.5
        assert gw.client.post("/admin/models/m/shadow", json={"sample_rate": 2}, headers=AUTH).status_code == 400
        assert gw.client.post("/admin/models/m/shadow", json={"sample_rate": 0.1}).status_code in (401, 403)
        sent = _send(gw, _rows(400, seed=5), "s")
        mirror = gw.plane.models["m"].shadow
        chosen = {rid for rid in sent if zlib.crc32(rid.encode()) < 0.5 * 2**32}
        eventually(lambda: mirror.mirrored == len(chosen), what="sampled requests mirrored")
    mirrored = {json.loads(x)["request_id"] for f in logdir.rglob("*.jsonl") for x in f.read_text().splitlines()}
    assert mirrored == chosen and 120 < len(chosen) < 280


def _settings_with_policy(uri: str, tmp_path, **shadow) -> GatewaySettings:
    """Settings whose drift policy for `m` carries these shadow rules, evaluated every 50 ms."""
    d = tmp_path / "policies"
    d.mkdir()
    rules = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in shadow.items())
    (d / "m.yaml").write_text(f"""model: m
training:
  data: {{source: data, latest: 1}}
  features: [x0, x1, x2, x3, x4, x5, x6, x7]
  target: y
  kind: regression
shadow:
{rules}
""")
    return settings_for(uri, ["m"], tmp_path, shadow={"budget": 1.0, "evaluate_interval_s": 0.05},
                        drift={"policies": str(d)})


def test_auto_promotion_fires_once_after_min_requests(registry_with_pair, tmp_path) -> None:
    uri, _, _ = registry_with_pair
    settings = _settings_with_policy(uri, tmp_path, min_requests=200, max_prediction_psi=50.0,
                                     max_p99_latency_ratio=1000.0, auto_promote=True)
    with ThreadedGateway(settings) as gw:
        _wait_shadow(gw, 2)
        mirror = gw.plane.models["m"].shadow
        _send(gw, _rows(150, seed=6), "early")
        eventually(lambda: mirror.mirrored == 150, what="mirrored")
        eventually(lambda: (rep := mirror.current_report()) is not None and rep.failing == ["min_requests"],
                   what="evaluated")
        assert gw.serving("m") == 1  # never before min_requests
        _send(gw, _rows(100, seed=7), "late")
        gw.wait_serving("m", 2)
        eventually(lambda: gw.plane.models["m"].stages["shadow"].serving_version is None, what="shadow cleared")
    with Registry.open(uri) as reg:
        auto = [e for e in reg.history("m", kinds={"promoted"}) if e.actor == "gateway:auto-promote"]
        assert len(auto) == 1 and auto[0].version == 2 and auto[0].from_version == 1
        assert auto[0].details["shadow_report"]["compared"] >= 200
        assert reg.get_pointer("m", "shadow") is None


def test_a_failing_rule_blocks_promotion_and_the_report_says_which(registry_with_pair, tmp_path) -> None:
    uri, _, _ = registry_with_pair
    settings = _settings_with_policy(uri, tmp_path, min_requests=50, max_prediction_psi=0.0,
                                     max_p99_latency_ratio=1000.0, auto_promote=True)
    with ThreadedGateway(settings) as gw:
        _wait_shadow(gw, 2)
        _send(gw, _rows(120, seed=8), "f")
        mirror = gw.plane.models["m"].shadow
        eventually(lambda: mirror.mirrored == 120, what="mirrored")
        report = gw.client.get("/admin/models/m/shadow", headers=AUTH).json()["report"]
        assert report["failing"] == ["max_prediction_psi"] and not report["rules_met"]
        assert gw.serving("m") == 1
