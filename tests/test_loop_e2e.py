"""The whole loop with real processes (`inferloop trainer serve`, `inferloop serve`, CLI builds),
on a file registry and on S3 (a real moto server), via the same code as `inferloop demo`:
drift trips on the gateway → one retrain job → v2 passes both gates against v1 on the same holdout →
shadow → promoted on evidence → hot swap → PSI against the new reference back under the threshold,
with zero failed requests."""

from __future__ import annotations

from pathlib import Path

from inferloop.demo import DemoConfig, run_demo
from inferloop.registry import Registry


def _check(result, registry: str, s3_endpoint: str | None = None) -> None:
    assert result.ok, result
    assert result.failed == 0 and result.served > 0
    assert result.production_version == 2 and result.versions == 2
    assert result.by_version.get(1, 0) > 0 and result.by_version.get(2, 0) > 0
    assert result.psi_before >= result.threshold > result.psi_after
    assert result.gate_v2["passed"] and result.gate_v2["candidate_rmse"] < result.gate_v2["v1_rmse_same_holdout"]
    assert result.retrain_jobs == 1
    with Registry.open(registry, s3_endpoint=s3_endpoint) as reg:
        assert reg.verify("revenue-forecast") == []
        kinds = [e.kind for e in reg.history("revenue-forecast", limit=1000)]
        for kind in ("registered", "gate_passed", "drift_detected", "retrain_requested", "swapped", "archived"):
            assert kind in kinds
        jobs = {e.details.get("job_id") for e in reg.history("revenue-forecast", kinds={"retrain_requested"})
                if e.details.get("job_id")}
        assert len(jobs) == 1  # every replica's request landed on the same job
        assert kinds.count("retrain_requested") == 1  # recorded once, by the trainer that created the job


def test_loop_closes_on_a_file_registry(tmp_path) -> None:
    registry = f"file://{tmp_path / 'model-registry'}"
    result = run_demo(DemoConfig(workdir=tmp_path / "demo", registry=registry, rows_per_day=600, epochs=8,
                                 say=lambda *_: None))
    _check(result, registry)


def test_loop_closes_on_s3_with_three_gateway_replicas(tmp_path, moto_server) -> None:
    registry = f"s3://{moto_server.create_bucket()}/inferloop"
    result = run_demo(DemoConfig(workdir=tmp_path / "demo", registry=registry, s3_endpoint=moto_server.endpoint,
                                 rows_per_day=600, epochs=8, replicas=3, say=lambda *_: None))
    _check(result, registry, moto_server.endpoint)


def test_loop_retrains_the_users_own_model_on_drift(tmp_path) -> None:
    """The same loop with the user's training code (tests/fixtures/shop_project, `shop.tabular:fit`):
    the drift-triggered job in `inferloop trainer serve` runs that entrypoint, and its v2 reaches
    production through shadow."""
    registry = f"file://{tmp_path / 'model-registry'}"
    project = Path(__file__).parent / "fixtures" / "shop_project"
    result = run_demo(DemoConfig(workdir=tmp_path / "demo", registry=registry, rows_per_day=600,
                                 entrypoint="shop.tabular:fit", params={"epochs": 8, "width": 32, "lr": 0.01},
                                 project=project, say=lambda *_: None))
    _check(result, registry)
    with Registry.open(registry) as reg:
        for version in (1, 2):
            lineage = reg.get_manifest("revenue-forecast", version).lineage
            assert lineage.entrypoint is not None and lineage.entrypoint.entrypoint == "shop.tabular:fit"
        retrained = reg.get_manifest("revenue-forecast", 2)
    assert "trigger:drift" in retrained.tags
    assert retrained.artifact.format == "torch.export"  # the user's module, not the built-in MLP
