"""Mistakes that used to pass silently now say so: a registry path with a typo (reading commands
never create a registry: "no registry at URI", exit 2), a missing S3 bucket, and a gateway told to
serve a model that is not in the registry (said at start-up, 404 for its requests)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from inferloop.registry import MLP, Registry

from .gateway_harness import GatewayProcess, ThreadedGateway, eventually, infer_body, settings_for
from .trainer_support import run_cli

READ_VERBS = [["list"], ["list", "m"], ["show", "m"], ["show", "m", "1"], ["history", "m"], ["verify", "m"]]
WRITE_VERBS = [["promote", "m", "1", "--stage", "staging"], ["rollback", "m", "--stage", "production"]]


def _register(uri: str, name: str = "m", stage: str | None = "production") -> int:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 8)).astype(np.float32))
    torch.manual_seed(1)
    with Registry.open(uri) as reg:
        with reg.track(name) as run:
            version = run.register(MLP(8, 1, [16]), example_inputs=x[:8], reference=x)
        if stage is not None:
            reg.promote(name, version, stage)
    return version


# -- registry commands never create a registry ------------------------------------------------------
@pytest.mark.parametrize("verb", READ_VERBS + WRITE_VERBS, ids=lambda v: " ".join(v))
def test_registry_commands_refuse_a_missing_registry_and_create_nothing(tmp_path: Path, capsys,
                                                                        verb: list[str]) -> None:
    missing = tmp_path / "no-such-dir"
    code, out, err = run_cli(capsys, "registry", *verb, "--registry", f"file://{missing}")
    assert (code, out) == (2, "")
    assert err == f"inferloop: error: no registry at file://{missing}\n"
    assert not missing.exists()


def test_a_typo_of_a_real_registry_path_is_not_an_empty_registry(tmp_path: Path, capsys) -> None:
    real = tmp_path / "registry"
    _register(f"file://{real}")
    code, out, _ = run_cli(capsys, "registry", "list", "--registry", f"file://{real}")
    assert code == 0 and out.splitlines()[1].split()[:2] == ["m", "1"]
    typo = tmp_path / "registyr"
    code, out, err = run_cli(capsys, "registry", "list", "--registry", str(typo))  # a bare path too
    assert code == 2 and out == "" and f"no registry at file://{typo}" in err
    assert not typo.exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    code, _, err = run_cli(capsys, "registry", "list", "--registry", str(a_file))
    assert code == 2 and f"no registry at file://{a_file} (it is a file)" in err


def test_an_existing_empty_registry_is_listed_as_empty(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli(capsys, "registry", "list", "--registry", str(empty))
    assert code == 0, err
    assert out.split() == ["MODEL", "LATEST", "STAGING", "SHADOW", "PRODUCTION"]


def test_writes_still_create_the_registry(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'new' / 'registry'}"
    assert _register(uri) == 1
    assert (tmp_path / "new" / "registry" / "models" / "m").is_dir()


def test_reproduce_reads_and_creates_nothing(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-dir"
    code, _, err = run_cli(capsys, "train", "--reproduce", "m", "1", "--registry", f"file://{missing}")
    assert code == 2 and err == f"inferloop: error: no registry at file://{missing}\n"
    assert not missing.exists()


@pytest.mark.parametrize("verb", [["list"], ["show", "m"]], ids=lambda v: " ".join(v))
def test_a_missing_bucket_is_a_clear_error(moto_server, capsys, verb: list[str]) -> None:
    code, out, err = run_cli(capsys, "registry", *verb, "--registry", "s3://no-such-bucket/inferloop")
    assert (code, out) == (2, "")
    assert err.startswith("inferloop: error: no registry at s3://no-such-bucket/inferloop: "
                          "bucket 'no-such-bucket' does not exist at http://127.0.0.1:"), err
    assert err.count("\n") == 1


# -- a gateway serving a model that is not in the registry ------------------------------------------
def test_a_model_missing_from_the_registry_is_said_at_start_up_and_answered_404(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'registry'}"
    _register(uri)
    args = ["--registry", uri, "--model", "m", "--model", "no-such-model", "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu"]
    with GatewayProcess(args) as gw:
        def answered() -> bool:
            try:
                return gw.client.get("/v2/health/ready").json().get("detail") is not None
            except Exception:  # noqa: BLE001 - not listening yet
                return False

        eventually(answered, 60, "readiness with a detail")
        ready = gw.client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json()["detail"] == "model 'no-such-model' does not exist in the registry"
        eventually(lambda: gw.client.get("/v2/models/m").status_code == 200, 60, "m serving")
        for path, body in [("/v2/models/no-such-model/infer", infer_body([[0.0] * 8])),
                           ("/v1/models/no-such-model/predict", {"instances": [[0.0] * 8]})]:
            r = gw.client.post(path, json=body)
            assert r.status_code == 404, r.text
            assert r.json() == {"error": "model 'no-such-model' does not exist in the registry"}
        assert gw.client.get("/v2/models/no-such-model").status_code == 404
        assert gw.client.post("/v2/models/m/infer", json=infer_body([[0.0] * 8])).status_code == 200
    log = gw.collect_output()
    assert log.count("model 'no-such-model' does not exist in the registry") == 1, log
    assert f"does not exist in the registry {uri}" in log


def test_a_missing_model_becomes_not_ready_then_served_once_it_is_registered(tmp_path: Path, caplog) -> None:
    uri = f"file://{tmp_path / 'registry'}"
    _register(uri)
    caplog.set_level(logging.WARNING, logger="inferloop.gateway")
    with ThreadedGateway(settings_for(uri, ["m", "late"], tmp_path, shadow={"enabled": True})) as gw:
        predict = {"instances": [[0.0] * 8]}
        eventually(lambda: gw.client.post("/v1/models/late/predict", json=predict).status_code == 404, 30, "404")
        assert gw.status("late")["stages"]["production"]["model_exists"] is False
        _register(uri, "late", stage=None)  # exists now, with no production version: 503, not 404
        eventually(lambda: gw.client.post("/v1/models/late/predict", json=predict).status_code == 503, 30, "503")
        assert "detail" not in gw.client.get("/v2/health/ready").json()
        with Registry.open(uri) as reg:
            reg.promote("late", 1, "production")
        gw.wait_ready()
        assert gw.client.post("/v1/models/late/predict", json=predict).status_code == 200
    said = [r.getMessage() for r in caplog.records if "late" in r.getMessage()]
    assert sum("does not exist in the registry" in m for m in said) == 1, said  # once, not per stage or round
    assert any("'late' now exists in the registry" in m for m in said), said


def test_serving_from_a_registry_path_that_does_not_exist_creates_nothing(tmp_path: Path, caplog) -> None:
    """Observed: a gateway started on a mistyped registry path logs "no registry at URI" and answers
    404 for its model; the directory is never created (the gateway only reads the registry)."""
    typo = tmp_path / "model-registy"
    with caplog.at_level(logging.ERROR, logger="inferloop.gateway"):
        with ThreadedGateway(settings_for(f"file://{typo}", ["m"], tmp_path)) as gw:
            eventually(lambda: gw.client.post("/v2/models/m/infer", json=infer_body([[0.0] * 8])).status_code
                       == 404, 30, "the missing model answered 404")
    assert not typo.exists()
    assert any("no registry at" in r.getMessage() for r in caplog.records)
