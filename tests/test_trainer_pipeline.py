"""`inferloop train` end to end on a real registry (file:// and a real S3 server): lineage, bit-identical
rebuilds, both gates against production on the same holdout, notifications to a real local receiver,
`--reproduce`, and bad input that registers nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from inferloop.registry import Registry
from inferloop.registry.lineage import file_digest
from inferloop.trainer import metrics
from inferloop.trainer.data import holdout_split, load_dataset
from inferloop.trainer.pipeline import environment_warnings

from .trainer_support import Receiver, make_data, policy_dict, run_cli, write_policy


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_data(tmp_path)


def _train(capsys, policy: Path, uri: str, *extra: str) -> tuple[int, dict, str]:
    code, out, err = run_cli(capsys, "train", "--policy", str(policy), "--registry", uri, "--json", *extra)
    return code, (json.loads(out) if out.strip() else {}), err


def test_build_registers_a_version_with_full_lineage(tmp_path: Path, data: Path, registry_uri: str, capsys) -> None:
    policy = write_policy(tmp_path / "rev.yaml", policy_dict(data))
    code, summary, err = _train(capsys, policy, registry_uri, "--reason", "first build")
    assert code == 0, err
    assert "epoch 3/3" in err and "gate absolute: PASS" in err
    assert summary["version"] == 1 and summary["created"] and summary["verdict"] == "passed"
    assert summary["promoted"] == "staging"
    with Registry.open(registry_uri) as reg:
        m = reg.get_manifest("rev", 1)
        assert reg.get_pointer("rev", "staging").version == 1
        events = reg.history("rev", kinds={"gate_passed"})
    assert m.artifact.digest == summary["digest"]
    # the exact partitions of the window (latest 4 of 6), each with the digest of its file
    assert [p.name for p in m.lineage.data.partitions] == ["2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06"]
    assert [p.digest for p in m.lineage.data.partitions] == [
        file_digest(data / f"{p.name}.parquet") for p in m.lineage.data.partitions]
    assert m.lineage.data.uri == f"file://{data}" and m.lineage.data.digest == summary["data_digest"]
    assert m.lineage.seed == 3 and m.lineage.world_size == 1
    assert m.lineage.params["params"]["epochs"] == 3 and m.lineage.params["params"]["hidden"] == [16]
    assert m.lineage.params["entrypoint"] == "inferloop.trainer.builtin:mlp"
    assert m.lineage.entrypoint is not None and m.lineage.entrypoint.module_file.endswith("trainer/builtin.py")
    assert m.lineage.params["features"][0] == "price" and m.lineage.params["threads"] == 1
    assert m.lineage.environment.device == "cpu" and m.lineage.environment.torch == str(torch.__version__)
    assert m.lineage.code.commit  # the tests run in the repository's checkout
    assert [f.name for f in m.signature.features] == m.lineage.params["features"]
    assert m.signature.output_kind == "regression"
    assert set(m.metrics) == {"rmse", "mae", "r2", "train_loss"} and m.metrics["rmse"] == summary["metrics"]["rmse"]
    assert m.reference is not None and m.reference.predictions is not None
    # drift bins every feature and the first output (registry.drift_columns)
    assert [f.name for f in m.reference.features] == [*(f.name for f in m.signature.features), "output:output"]
    assert len(m.warmup) == 8
    # the verdict, both gates and the holdout digest are in the manifest and in the event
    assert m.validation is not None and m.validation.passed
    assert [c.gate for c in m.validation.checks] == ["absolute", "relative"]
    assert "no production version yet" in m.validation.checks[1].detail
    (event,) = events
    assert event.version == 1 and event.reason == "first build"
    assert event.details["holdout_digest"] == m.validation.holdout_digest
    assert event.details["compared_version"] is None


def test_same_code_data_and_seed_is_bit_identical_and_the_same_version(tmp_path: Path, data: Path,
                                                                        registry_uri: str, capsys) -> None:
    policy = write_policy(tmp_path / "rev.yaml", policy_dict(data))
    first = _train(capsys, policy, registry_uri)[1]
    second = _train(capsys, policy, registry_uri)[1]
    assert second["digest"] == first["digest"]
    assert (second["version"], second["created"]) == (1, False)
    with Registry.open(registry_uri) as reg:
        assert reg.latest_version("rev") == 1
        blob = reg.get_blob(first["digest"])
    assert hashlib.sha256(blob).hexdigest() == first["digest"]
    # rebuilt from the manifest alone
    code, out, err = run_cli(capsys, "train", "--reproduce", "rev", "1", "--registry", registry_uri)
    assert code == 0, err
    assert "artifact digest MATCHES" in out and first["digest"] in out
    # another seed is another artifact, another version
    other = write_policy(tmp_path / "rev2.yaml", policy_dict(data, seed=4))
    third = _train(capsys, other, registry_uri)[1]
    assert third["digest"] != first["digest"] and (third["version"], third["created"]) == (2, True)


def test_binary_pipeline_metrics_and_probability_reference(tmp_path: Path, capsys) -> None:
    data = make_data(tmp_path, "classification")
    policy = write_policy(tmp_path / "churn.yaml", policy_dict(data, kind="classification", model="churn"))
    uri = f"file://{tmp_path / 'reg'}"
    code, summary, err = _train(capsys, policy, uri)
    assert code == 0, err
    assert set(summary["metrics"]) == {"f1", "accuracy", "auc"} and summary["metrics"]["f1"] > 0.6
    with Registry.open(uri) as reg:
        m = reg.get_manifest("churn", 1)
    assert m.signature.output_kind == "binary"
    assert m.reference.predictions.edges and 0 <= min(m.reference.predictions.edges) <= 1


def test_worse_candidate_fails_gate_two_on_the_same_holdout_and_notifies(tmp_path: Path, data: Path, capsys,
                                                                          monkeypatch) -> None:
    uri = f"file://{tmp_path / 'reg'}"
    good = policy_dict(data, epochs=6)
    good["validation"]["max_rmse"] = 1000.0
    assert _train(capsys, write_policy(tmp_path / "good.yaml", good), uri)[0] == 0
    with Registry.open(uri) as reg:
        reg.promote("rev", 1, "production", actor="test", reason="ship v1")
    with Receiver() as receiver:
        monkeypatch.setenv("INFERLOOP_SLACK_WEBHOOK_URL", f"{receiver.url}/slack")
        worse = policy_dict(data, epochs=1, lr=0.0005)  # a recipe change that hurts
        worse["validation"] = {**good["validation"], "notify_on_fail": [
            {"webhook": f"{receiver.url}/hook"}, {"slack": "#ml-ops-alerts"}]}
        code, summary, err = _train(capsys, write_policy(tmp_path / "worse.yaml", worse), uri, "--reason", "drift")
        posts = dict(receiver.posts)
    assert code == 1, err
    assert summary["verdict"] == "failed" and summary["version"] == 2 and summary["promoted"] is None
    absolute, relative = summary["validation"]["checks"]
    assert absolute["passed"] and not relative["passed"]
    assert relative["production_version"] == 1 and relative["production"] < relative["candidate"]
    with Registry.open(uri) as reg:
        assert reg.get_pointer("rev", "production").version == 1
        assert reg.get_pointer("rev", "staging").version == 1  # v1 was promoted there; v2 never
        (event,) = reg.history("rev", kinds={"gate_failed"})
        manifest = reg.get_manifest("rev", 2)
        production = reg.load_runnable("rev", 1)
    assert event.version == 2 and event.details["compared_version"] == 1
    assert event.details["holdout_digest"] == manifest.validation.holdout_digest
    assert not manifest.validation.passed
    # production's value is production evaluated on this run's holdout, not a number from its manifest
    spec = manifest.lineage.params
    ds = load_dataset(manifest.lineage.data.uri, [p.name for p in manifest.lineage.data.partitions],
                      spec["features"], spec["target"], "regression")
    _, hold = holdout_split(len(ds.y), spec["holdout_fraction"], manifest.lineage.seed)
    rmse = metrics.compute("regression", ds.y[hold], production.run([ds.x[hold]])[0][:, 0])["rmse"]
    assert relative["production"] == pytest.approx(rmse, rel=1e-9)
    # both notification targets got the verdict
    hook, slack = posts["/hook"], posts["/slack"]
    assert hook["event"] == "gate_failed" and hook["model"] == "rev" and hook["version"] == 2
    assert hook["holdout_digest"] == manifest.validation.holdout_digest and hook["reason"] == "drift"
    assert slack["channel"] == "#ml-ops-alerts" and "rev v2 failed validation" in slack["text"]
    assert [n["ok"] for n in summary["notifications"]] == [True, True]


def test_passing_candidate_replaces_production_by_compare_and_swap(tmp_path: Path, data: Path, capsys) -> None:
    uri = f"file://{tmp_path / 'reg'}"
    first = policy_dict(data, epochs=1)
    first["validation"] |= {"max_rmse": 1000.0, "promote_on_pass": "production"}
    assert _train(capsys, write_policy(tmp_path / "a.yaml", first), uri)[0] == 0
    better = policy_dict(data, epochs=8)
    better["validation"] = first["validation"]
    code, summary, err = _train(capsys, write_policy(tmp_path / "b.yaml", better), uri)
    assert code == 0, err
    assert summary["promoted"] == "production" and summary["validation"]["checks"][1]["production_version"] == 1
    with Registry.open(uri) as reg:
        pointer = reg.get_pointer("rev", "production")
        assert (pointer.version, pointer.previous_version) == (2, 1)
        assert [e.version for e in reg.history("rev", kinds={"archived"})] == [1]


def test_a_first_version_is_not_sent_to_shadow(tmp_path: Path, data: Path, capsys) -> None:
    """Shadow compares a candidate with production: with no production version there is nothing to
    compare, so `promote_on_pass: shadow` promotes nothing (the demo's v1 was mirrored to itself)."""
    uri = f"file://{tmp_path / 'reg'}"
    policy = policy_dict(data, epochs=1)
    policy["validation"] |= {"max_rmse": 1000.0, "promote_on_pass": "shadow"}
    path = write_policy(tmp_path / "p.yaml", policy)
    code, summary, err = _train(capsys, path, uri)
    assert code == 0 and summary["verdict"] == "passed" and summary["promoted"] is None, err
    assert "no production version" in err and "inferloop registry promote rev 1 --stage production" in err
    with Registry.open(uri) as reg:
        assert reg.get_pointer("rev", "shadow") is None
        reg.promote("rev", 1, "production")
    second = policy_dict(data, epochs=2)
    second["validation"] = policy["validation"]
    code, summary, err = _train(capsys, write_policy(tmp_path / "q.yaml", second), uri)
    assert code == 0 and summary["promoted"] == "shadow", err  # with production there, candidates go to shadow


def test_human_summary_and_exit_codes(tmp_path: Path, data: Path, capsys) -> None:
    uri = f"file://{tmp_path / 'reg'}"
    policy = policy_dict(data)
    policy["validation"]["max_rmse"] = 0.001  # unreachable
    code, out, err = run_cli(capsys, "train", "--policy", str(write_policy(tmp_path / "p.yaml", policy)),
                             "--registry", uri)
    assert code == 1
    assert "built rev v1 (new version)" in out and "gates     FAILED" in out
    assert "FAIL max_rmse: rmse" in out and "rows/s" in out
    with Registry.open(uri) as reg:
        assert reg.get_pointer("rev", "staging") is None  # registered, not promoted


def _write_partition(directory: Path, name: str, table: pa.Table) -> None:
    pq.write_table(table, directory / f"{name}.parquet")


def _poison(data: Path, column: str, value: float) -> None:
    path = data / "2024-01-06.parquet"
    table = pq.read_table(path)
    values = table.column(column).to_numpy().astype(np.float64)
    values[3] = value
    _write_partition(data, "2024-01-06", table.set_column(table.column_names.index(column), column, pa.array(values)))


@pytest.mark.parametrize(("case", "expected"), [
    ("malformed yaml", r"malformed YAML \(line"),
    ("unknown key", r"unknown key `learning_rate` in training"),
    ("wrong type", r"Expected `int \| null`, got `str` in training.epochs"),
    ("missing partitions", r"partition\(s\) 2023-01-01 not found"),
    ("empty partition", r"partition 2024-01-07 is empty"),
    ("nan feature", r"column 'price' has 1 NaN or infinite"),
    ("inf target", r"column 'revenue' has 1 NaN or infinite"),
    ("unreachable registry", r"cannot use registry directory"),
])
def test_bad_input_is_one_clear_error_and_registers_nothing(tmp_path: Path, data: Path, capsys, case: str,
                                                             expected: str) -> None:
    uri = f"file://{tmp_path / 'reg'}"
    policy = policy_dict(data)
    path = tmp_path / "p.yaml"
    if case == "malformed yaml":
        path.write_text("training:\n  data: {source: x, latest: 1\n")
    elif case == "unknown key":
        policy["training"]["learning_rate"] = 0.1
    elif case == "wrong type":
        policy["training"]["epochs"] = "three"
    elif case == "missing partitions":
        policy["training"]["data"] = {"source": str(data), "partitions": ["2024-01-01", "2023-01-01"]}
    elif case == "empty partition":
        schema = pq.read_table(data / "2024-01-01.parquet").schema
        _write_partition(data, "2024-01-07", schema.empty_table())
    elif case == "nan feature":
        _poison(data, "price", float("nan"))
    elif case == "inf target":
        _poison(data, "revenue", float("-inf"))
    elif case == "unreachable registry":
        (tmp_path / "a-file").write_text("")
        uri = f"file://{tmp_path / 'a-file' / 'reg'}"
    if not path.exists():
        write_policy(path, policy)
    code, out, err = run_cli(capsys, "train", "--policy", str(path), "--registry", uri)
    assert code == 2
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("inferloop: error: ") and "Traceback" not in err
    assert __import__("re").search(expected, line), line
    if case in ("malformed yaml", "unknown key", "wrong type"):
        assert str(path) in line
    if case != "unreachable registry":
        with Registry.open(uri) as reg:
            assert reg.list_models() == []


def test_registry_without_its_bucket_is_refused_before_training(tmp_path: Path, data: Path, capsys,
                                                                 moto_server) -> None:
    policy = write_policy(tmp_path / "p.yaml", policy_dict(data))
    code, out, err = run_cli(capsys, "train", "--policy", str(policy), "--registry", "s3://no-such-bucket/reg")
    assert code == 2 and "bucket 'no-such-bucket' does not exist" in err and "epoch" not in err


def test_reproduce_reports_a_different_artifact_and_the_metric_differences(tmp_path: Path, data: Path,
                                                                            capsys) -> None:
    uri = f"file://{tmp_path / 'reg'}"
    summary = _train(capsys, write_policy(tmp_path / "p.yaml", policy_dict(data)), uri)[1]
    with Registry.open(uri) as reg:
        built = reg.get_manifest("rev", 1)
        model = reg.load_model("rev", 1)
        with torch.no_grad():
            model.net[-1].bias += 5.0  # the same recipe on record, other weights (e.g. other hardware)
        with reg.track("rev", actor="test") as run:
            run.seed = built.lineage.seed
            run.set_data(built.lineage.data)
            run.log_params(built.lineage.params)
            run.log_metric("rmse", built.metrics["rmse"])
            v2 = run.register(model, example_inputs=np.asarray(built.warmup, np.float32),
                              feature_names=[f.name for f in built.signature.features])
    code, out, err = run_cli(capsys, "train", "--reproduce", "rev", str(v2), "--registry", uri, "--json")
    assert code == 1, err
    result = json.loads(out)
    assert result["digest_matches"] is False and result["digest"] == summary["digest"]
    assert result["expected_digest"] != summary["digest"]
    assert result["metric_diffs"]["rmse"] == pytest.approx(summary["metrics"]["rmse"] - built.metrics["rmse"])
    assert result["metric_diffs"]["mae"] is None  # not recorded on v2


def test_reproduce_refuses_changed_data(tmp_path: Path, data: Path, capsys) -> None:
    uri = f"file://{tmp_path / 'reg'}"
    _train(capsys, write_policy(tmp_path / "p.yaml", policy_dict(data)), uri)
    _poison(data, "price", 12.5)
    code, _, err = run_cli(capsys, "train", "--reproduce", "rev", "1", "--registry", uri)
    assert code == 2 and "partition 2024-01-06 changed since the version was built" in err


def test_reproduce_warns_when_commit_or_packages_differ(tmp_path: Path, data: Path, capsys) -> None:
    uri = f"file://{tmp_path / 'reg'}"
    _train(capsys, write_policy(tmp_path / "p.yaml", policy_dict(data)), uri)
    with Registry.open(uri) as reg:
        m = reg.get_manifest("rev", 1)
    lineage = m.lineage
    other = msgspec.structs.replace(m, lineage=msgspec.structs.replace(
        lineage, code=msgspec.structs.replace(lineage.code, commit="0" * 40),
        environment=msgspec.structs.replace(lineage.environment, packages_digest="f" * 64)))
    warnings = environment_warnings(other)
    assert any(w.startswith("code commit differs: built at 0000") for w in warnings)
    assert any("packages digest changed" in w for w in warnings)
    assert not any("commit differs" in w or "packages" in w for w in environment_warnings(m))


def test_reproduce_of_a_version_not_built_by_the_trainer(tmp_path: Path, capsys) -> None:
    from .helpers import register_tiny

    uri = f"file://{tmp_path / 'reg'}"
    with Registry.open(uri) as reg:
        register_tiny(reg, "hand-made", 1)
    code, _, err = run_cli(capsys, "train", "--reproduce", "hand-made", "1", "--registry", uri)
    assert code == 2 and "was not built by this trainer" in err
