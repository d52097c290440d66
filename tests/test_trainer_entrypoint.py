"""`training.entrypoint`: the trainer runs the user's own training code (tests/fixtures/shop_project,
a project inferloop knows nothing of), judges the exported artifact on the holdout, registers it with
the entrypoint's code lineage, and the gateway serves exactly what was judged."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from inferloop.registry import Registry
from inferloop.trainer import metrics
from inferloop.trainer.data import holdout_split, load_dataset

from .gateway_harness import ThreadedGateway, settings_for
from .trainer_support import run_cli

PROJECT = Path(__file__).parent / "fixtures" / "shop_project"
STORES, DENSE = 10, ["d0", "d1", "d2", "d3"]
FEATURES = ["store", *DENSE]


def shop_data(directory: Path, days: int = 4, rows: int = 300, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    effect = np.linspace(-20, 20, STORES)
    for day in range(days):
        store = rng.integers(0, STORES, rows)
        dense = rng.normal(size=(rows, len(DENSE)))
        revenue = 100 + effect[store] + dense @ np.array([5.0, -3.0, 2.0, 1.0]) + rng.normal(0, 1, rows)
        pq.write_table(pa.table({"store": store, **{c: dense[:, i] for i, c in enumerate(DENSE)},
                                 "revenue": revenue, "note": [f"day {day}"] * rows}),
                       directory / f"2024-01-0{day + 1}.parquet")
    return directory


def _forget_shop() -> None:
    # the CLI runs in this process: each test's copy of the project must be imported afresh
    for name in [n for n in sys.modules if n == "shop" or n.startswith("shop.")]:
        del sys.modules[name]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A copy of the user's project, under git (its commit is part of the lineage)."""
    root = tmp_path / "project"
    shutil.copytree(PROJECT, root, ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    _forget_shop()
    yield root
    _forget_shop()
    if str(root) in sys.path:
        sys.path.remove(str(root))


def shop_policy(project: Path, data: str, *, entrypoint: str = "shop.train:fit", seed: int = 5,
                **training: Any) -> Path:
    policy = {
        "model": "shop",
        "training": {"data": {"source": data, "latest": 4}, "features": FEATURES, "target": "revenue",
                     "kind": "regression", "entrypoint": entrypoint,
                     "params": {"stores": STORES, "epochs": 25, "lr": 0.05}, "seed": seed, **training},
        "validation": {"max_rmse": 30.0, "compare_to": "production", "tolerance": -100.0,
                       "promote_on_pass": "production"},
    }
    path = project / "policies" / f"shop-{seed}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def train(capsys, policy: Path, uri: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = run_cli(capsys, "train", "--policy", str(policy), "--registry", uri, "--json", *extra)
    return code, json.loads(out) if out.strip() else {}, err


def test_users_entrypoint_is_gated_registered_with_its_lineage_and_served_as_judged(tmp_path, project, capsys):
    data, uri = shop_data(tmp_path / "data"), f"file://{tmp_path / 'reg'}"
    code, first, err = train(capsys, shop_policy(project, str(data)), uri)
    assert code == 0, err
    assert first["version"] == 1 and first["promoted"] == "production" and first["entrypoint"] == "shop.train:fit"
    assert first["metrics"]["rmse"] < 5 and "train_mse" in first["training_metrics"]
    assert "step 24  train_mse" in err  # ctx.log_metric lines reach the build log

    # the same code, data and seed: the same bytes, so no new version
    code, again, err = train(capsys, shop_policy(project, str(data)), uri)
    assert code == 0, err
    assert again["version"] == 1 and not again["created"] and again["digest"] == first["digest"]

    # another seed: a new candidate, gate 2 runs production's stored artifact on the same holdout
    code, second, err = train(capsys, shop_policy(project, str(data), seed=6), uri)
    assert code == 0, err
    assert second["version"] == 2
    relative = second["validation"]["checks"][1]
    assert relative["gate"] == "relative" and relative["production_version"] == 1
    assert relative["production"] is not None

    with Registry.open(uri) as reg:
        m = reg.get_manifest("shop", 1)
        reg.promote("shop", 1, "production", reason="serve v1")
    # lineage: the entrypoint, its module's and its package's digests, its repository's commit
    ep = m.lineage.entrypoint
    train_py = project / "shop" / "train.py"
    assert ep is not None and ep.entrypoint == "shop.train:fit" and ep.module_file == str(train_py)
    assert ep.module_digest == hashlib.sha256(train_py.read_bytes()).hexdigest()
    assert ep.package_digest != ep.module_digest and ep.root == str(project)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert ep.code.commit == head and ep.code.dirty is False
    assert m.lineage.params["entrypoint"] == "shop.train:fit" and m.lineage.params["params"]["stores"] == STORES
    assert [i["name"] for i in m.lineage.params["inputs"]] == ["store", "dense"]
    # the signature the declared inputs give: an INT64 id and an FP32 matrix
    assert [(t.name, t.datatype, t.shape) for t in m.signature.inputs] == [
        ("store", "INT64", [-1]), ("dense", "FP32", [-1, 4])]
    assert "team:shop" in m.tags and "train_mse" in m.metrics

    # the gateway serves what the gates judged: its answers on the holdout give the recorded rmse
    ds = load_dataset(m.lineage.data.uri, [p.name for p in m.lineage.data.partitions], FEATURES, "revenue",
                      "regression")
    _, hold = holdout_split(len(ds.y), m.lineage.params["holdout_fraction"], m.lineage.seed)
    store, dense = ds.x[hold, 0].astype(np.int64), ds.x[hold, 1:]
    with ThreadedGateway(settings_for(uri, ["shop"], tmp_path)) as gw:
        gw.wait_serving("shop", 1)
        r = gw.client.post("/v2/models/shop/infer", json={"inputs": [
            {"name": "store", "datatype": "INT64", "shape": [len(hold)], "data": store.tolist()},
            {"name": "dense", "datatype": "FP32", "shape": list(dense.shape), "data": dense.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    served = np.array(r.json()["outputs"][0]["data"], dtype=np.float64)
    assert metrics.compute("regression", ds.y[hold], served)["rmse"] == pytest.approx(m.metrics["rmse"], rel=1e-6)


def test_reproduce_rebuilds_the_same_bytes_and_refuses_edited_code(tmp_path, project, capsys):
    data, uri = shop_data(tmp_path / "data"), f"file://{tmp_path / 'reg'}"
    code, built, err = train(capsys, shop_policy(project, str(data)), uri)
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "--reproduce", "shop", "1", "--registry", uri, "--json")
    assert code == 0, err
    assert json.loads(out)["digest_matches"] is True
    train_py = project / "shop" / "train.py"
    train_py.write_text(train_py.read_text().replace("dim: int = 4", "dim: int = 5"))
    code, out, err = run_cli(capsys, "train", "--reproduce", "shop", "1", "--registry", uri, "--json")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("inferloop: error: cannot reproduce shop v1: the entrypoint's source")
    assert str(train_py) in line and "changed since the version was built" in line


MISTAKES = [
    ("shop.nothere:fit", r"no module 'shop.nothere' in installed packages or .*project"),
    ("shop.train:missing", r"shop.train \(.*train.py\) has no 'missing'"),
    ("shop.broken_import:fit", r"importing training.entrypoint 'shop.broken_import:fit' raised ModuleNotFoundError: "
                               r"No module named 'torch_geometricc' \(at .*broken_import.py:3\)"),
    ("shop.mistakes:no_context", r"must take one argument, the training context .*signature is \(\)"),
    ("shop.mistakes:raises", r"'shop.mistakes:raises' raised KeyError: \"no column 'price_eur' among 7 columns\" "
                             r"\(at .*mistakes.py:13\)"),
    ("shop.mistakes:not_a_model", r"returned a dict: return a torch.nn.Module, an ONNX model"),
    ("shop.mistakes:cannot_export", r"cannot be packaged for serving .*torch.export cannot capture DataDependent"),
    ("shop.mistakes:wrong_width", r"cannot be packaged for serving on the features \(one FP32 input of 5 columns\)"),
    ("shop.mistakes:nan_predictions", r"predicts NaN or infinity on \d+ of \d+ holdout rows"),
]


@pytest.mark.parametrize(("entrypoint", "expected"), MISTAKES, ids=[e for e, _ in MISTAKES])
def test_a_bad_entrypoint_is_one_line_exit_2_and_registers_nothing(tmp_path, project, capsys, entrypoint, expected):
    data, uri = shop_data(tmp_path / "data", days=4, rows=60), f"file://{tmp_path / 'reg'}"
    policy = shop_policy(project, str(data), entrypoint=entrypoint)
    policy.write_text(policy.read_text().replace("stores: 10\n", "{}\n").replace("    epochs: 25\n", "")
                      .replace("    lr: 0.05\n", "").replace("    {}\n", "").replace("params:\n", "params: {}\n"))
    code, out, err = run_cli(capsys, "train", "--policy", str(policy), "--registry", uri)
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]  # after the build's progress lines, one error line
    assert "Traceback" not in err and err.count("inferloop: error") == 1 and line.startswith("inferloop: error: ")
    assert __import__("re").search(expected, line), line
    with Registry.open(uri) as reg:
        assert reg.list_models() == []


def test_debug_shows_the_users_traceback(tmp_path, project, capsys, monkeypatch):
    data, uri = shop_data(tmp_path / "data", rows=60), f"file://{tmp_path / 'reg'}"
    policy = shop_policy(project, str(data), entrypoint="shop.mistakes:raises")
    monkeypatch.setenv("INFERLOOP_DEBUG", "1")
    code, _, err = run_cli(capsys, "train", "--policy", str(policy), "--registry", uri)
    assert code == 2
    assert "Traceback" in err and "mistakes.py\", line 13, in raises" in err


def test_torchrun_runs_the_users_entrypoint_with_ddp(tmp_path, project, capsys):
    data, uri = shop_data(tmp_path / "data"), f"file://{tmp_path / 'reg'}"
    policy = shop_policy(project, str(data), launcher="torchrun", nproc=2)
    code, summary, err = train(capsys, policy, uri)
    assert code == 0, err
    assert summary["world_size"] == 2 and summary["version"] == 1 and summary["metrics"]["rmse"] < 5
    with Registry.open(uri) as reg:
        assert reg.latest_version("shop") == 1  # rank 0 alone registered
        manifest = reg.get_manifest("shop", 1)
    assert manifest.lineage.world_size == 2 and manifest.lineage.entrypoint is not None


def test_s3_partitions_train_the_same_model_as_the_same_partitions_on_disk(tmp_path, project, capsys, moto_server):
    data = shop_data(tmp_path / "data")
    bucket = moto_server.create_bucket()
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    for path in sorted(data.glob("*.parquet")):
        s3.put_object(Bucket=bucket, Key=f"shop/days/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket=bucket, Key="shop/days/_SUCCESS", Body=b"")
    on_disk, on_s3 = f"file://{tmp_path / 'reg-disk'}", f"file://{tmp_path / 'reg-s3'}"
    code, disk, err = train(capsys, shop_policy(project, str(data)), on_disk)
    assert code == 0, err
    code, remote, err = train(capsys, shop_policy(project, f"s3://{bucket}/shop/days"), on_s3,
                              "--s3-endpoint", moto_server.endpoint)
    assert code == 0, err
    assert remote["data_uri"] == f"s3://{bucket}/shop/days" and remote["partitions"] == disk["partitions"]
    assert remote["data_digest"] == disk["data_digest"] and remote["digest"] == disk["digest"]
    with Registry.open(on_s3) as reg:
        lineage = reg.get_manifest("shop", 1).lineage.data
    assert [p.digest for p in lineage.partitions] == [
        hashlib.sha256((data / f"{p.name}.parquet").read_bytes()).hexdigest() for p in lineage.partitions]
