"""Admin endpoints: bearer token (or refusal when none is configured), pointer moves through the
registry's compare-and-swap with the actor recorded, and the status view of slots and swaps."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from inferloop.registry import Registry
from tests.gateway_harness import AUTH, ThreadedGateway, settings_for
from tests.helpers import register_tiny

MODEL = "admin-model"


def test_with_no_token_configured_every_admin_call_is_refused(tmp_path: Path, caplog) -> None:
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        reg.promote(MODEL, register_tiny(reg, MODEL, seed=1), "production")
    with caplog.at_level("WARNING", logger="inferloop.gateway"):
        with ThreadedGateway(settings_for(uri, [MODEL], tmp_path, admin_token=None)) as gw:
            gw.wait_ready()
            for method, path, body in [("GET", f"/admin/models/{MODEL}", None),
                                       ("POST", f"/admin/models/{MODEL}/promote", {"version": 1}),
                                       ("POST", f"/admin/models/{MODEL}/rollback", {})]:
                for headers in ({}, AUTH, {"authorization": "Bearer anything"}):
                    r = gw.client.request(method, path, json=body, headers=headers)
                    assert r.status_code == 403, r.text
                    assert "INFERLOOP_ADMIN_TOKEN is not set" in r.json()["error"]
            assert gw.client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
                {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}]}).status_code == 200
    assert any("INFERLOOP_ADMIN_TOKEN is not set" in r.message for r in caplog.records)


def test_moves_go_through_compare_and_swap_and_record_the_actor(registry_uri: str, tmp_path: Path) -> None:
    with Registry.open(registry_uri) as reg:
        v1, v2, v3 = (register_tiny(reg, MODEL, seed=s) for s in (1, 2, 3))
        reg.promote(MODEL, v1, "production")
        with ThreadedGateway(settings_for(registry_uri, [MODEL], tmp_path)) as gw:
            gw.wait_serving(MODEL, v1)
            c = gw.client
            url = f"/admin/models/{MODEL}"
            r = c.post(f"{url}/promote", json={"version": v2, "expected_version": v2}, headers=AUTH)
            assert r.status_code == 409 and "not 2" in r.json()["error"]
            r = c.post(f"{url}/promote", json={"version": v2, "expected_version": v1, "reason": "better rmse",
                                               "actor": "alice"}, headers=AUTH)
            assert r.status_code == 200, r.text
            assert r.json() == {"model": MODEL, "stage": "production", "version": v2, "previous_version": v1,
                                "actor": "alice via gateway from 127.0.0.1",
                                "serving": {"applied": True, "version": v2, "error": None}}
            r = c.post(f"{url}/promote", json={"version": v3, "stage": "staging"}, headers=AUTH)
            assert r.status_code == 200 and r.json()["serving"] is None  # not a stage this gateway serves
            r = c.post(f"{url}/rollback", json={"reason": "pager went off", "actor": "bob"}, headers=AUTH)
            assert r.status_code == 200 and r.json()["serving"]["version"] == v1
            for body, status, words in [({"version": 99}, 404, "no version 99"),
                                        ({"version": v2, "stage": "prod"}, 400, "unknown stage"),
                                        ({"version": "two"}, 400, "Expected `int`"),
                                        ({"version": v2, "colour": "red"}, 400, "unknown field")]:
                r = c.post(f"{url}/promote", json=body, headers=AUTH)
                assert r.status_code == status and words in r.json()["error"], r.text
            r = c.post("/admin/models/elsewhere/promote", json={"version": 1}, headers=AUTH)
            assert r.status_code == 404 and "not served" in r.json()["error"]
            r = c.post(f"{url}/rollback", json={"stage": "shadow"}, headers=AUTH)
            assert r.status_code == 404 and "no shadow pointer" in r.json()["error"]
            status = gw.status(MODEL)
        events = reg.history(MODEL, kinds={"promoted", "rolled_back"})
        assert reg.get_pointer(MODEL, "production").version == v1
    assert [(e.kind, e.version, e.actor) for e in events[-3:]] == [
        ("promoted", v2, "alice via gateway from 127.0.0.1"), ("promoted", v3, "admin via gateway from 127.0.0.1"),
        ("rolled_back", v1, "bob via gateway from 127.0.0.1")]
    assert events[-3].reason == "better rmse" and events[-1].reason == "pager went off"
    production = status["stages"]["production"]
    assert status["ready"] and status["device"] == "cpu"
    assert production["serving_version"] == v1 and production["pointer_version"] == v1
    assert {(s["version"], s["state"]) for s in production["slots"]} == {(v1, "serving"), (v2, "standby")}
    assert production["last_swap"]["to_version"] == v1 and production["last_swap"]["reused"] is True
    assert production["errors"] == [] and production["polls"] >= 1


def test_racing_admin_promotions_one_wins_the_other_gets_409(tmp_path: Path) -> None:
    # moto does not serialise racing conditional writes, so the race is proven on the file store
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        v1, v2, v3 = (register_tiny(reg, MODEL, seed=s) for s in (1, 2, 3))
        reg.promote(MODEL, v1, "production")
    with ThreadedGateway(settings_for(uri, [MODEL], tmp_path)) as gw:
        gw.wait_serving(MODEL, v1)
        results: dict[int, httpx.Response] = {}
        barrier = threading.Barrier(2)

        def promote(version: int) -> None:
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                barrier.wait()
                results[version] = c.post(f"/admin/models/{MODEL}/promote",
                                          json={"version": version, "expected_version": v1}, headers=AUTH)

        threads = [threading.Thread(target=promote, args=(v,)) for v in (v2, v3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in results.values())
        assert codes == [200, 409], {v: r.text for v, r in results.items()}
        winner = next(v for v, r in results.items() if r.status_code == 200)
        gw.wait_serving(MODEL, winner)
    with Registry.open(uri) as reg:
        assert reg.get_pointer(MODEL, "production").version == winner


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"version": 1, "stage": 3}'])
def test_malformed_admin_bodies_are_400(tmp_path: Path, body: bytes) -> None:
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        reg.promote(MODEL, register_tiny(reg, MODEL, seed=1), "production")
    with ThreadedGateway(settings_for(uri, [MODEL], tmp_path)) as gw:
        r = gw.client.post(f"/admin/models/{MODEL}/promote", content=body, headers=AUTH)
        assert r.status_code == 400 and "invalid admin request" in r.json()["error"], r.text


def test_with_shadow_and_drift_off_their_endpoints_say_so_and_record_nothing(tmp_path: Path) -> None:
    """Observed: a gateway started with shadow traffic and drift monitoring off answers the shadow
    report, the sampling change and the drift state with 503 and a message naming the disabled
    feature; the sampling change writes no audit event; inference and the status page still work."""
    uri = f"file://{tmp_path / 'registry'}"
    with Registry.open(uri) as reg:
        reg.promote(MODEL, register_tiny(reg, MODEL, seed=1), "production")
    settings = settings_for(uri, [MODEL], tmp_path, shadow={"enabled": False}, drift={"enabled": False})
    with ThreadedGateway(settings) as gw:
        gw.wait_ready()
        for method, path, body, words in [
                ("GET", f"/admin/models/{MODEL}/shadow", None, "shadow traffic is disabled"),
                ("POST", f"/admin/models/{MODEL}/shadow", {"sample_rate": 0.5}, "shadow traffic is disabled"),
                ("GET", f"/admin/models/{MODEL}/drift", None, "drift monitoring is disabled")]:
            r = gw.client.request(method, path, json=body, headers=AUTH)
            assert r.status_code == 503 and words in r.json()["error"], r.text
        assert gw.client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
            {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}]}).status_code == 200
        assert gw.status(MODEL)["batching"]["observers"] == []
        assert "inferloop_feature_bin_total" not in gw.client.get("/metrics").text
    with Registry.open(uri) as reg:
        assert [e for e in reg.history(MODEL, limit=100) if e.kind == "sampling_changed"] == []
