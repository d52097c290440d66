"""Policy schema (inferloop/policy/schema.py): the repo's policies load, and every bad file is one clear error
that names the file and the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferloop.policy import PolicyError, load_policies, load_policy, parse_policy

REPO = Path(__file__).resolve().parent.parent

BASE = """\
model: m
training:
  data: {source: data, latest: 3}
  features: [a, b]
  target: y
  kind: binary
"""


def test_repository_policies_load_with_the_seed_keys() -> None:
    policies = load_policies(REPO / "policies")
    assert set(policies) >= {"revenue-forecast", "churn"}
    rev = policies["revenue-forecast"][1]
    assert rev.training.kind == "regression" and rev.validation is not None
    assert rev.validation.thresholds() == [("max_rmse", "max", "rmse", 35.0)]
    assert rev.validation.compare_to == "production" and rev.validation.promote_on_pass == "staging"
    assert rev.training.schedule == "0 3 * * *"
    assert rev.monitor is not None and rev.monitor.methods.psi.threshold == 0.10
    assert rev.monitor.on_trigger.action == "retrain" and rev.shadow is not None
    churn = policies["churn"][1]
    assert churn.training.kind == "binary"
    assert churn.validation is not None and churn.validation.min_f1 == 0.88
    assert churn.validation.tolerance == -0.005
    assert churn.validation.notify_on_fail[0].slack == "#ml-ops-alerts"


def test_model_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "fraud-score.yaml"
    path.write_text(BASE.replace("model: m\n", ""))
    assert load_policy(path).name == "fraud-score"


@pytest.mark.parametrize(("text", "expected"), [
    ("training: [1, 2\n", r"malformed YAML \(line 2"),
    (BASE + "validaton:\n  min_f1: 0.8\n", r"unknown key `validaton`"),
    (BASE + "  learning_rate: 0.1\n", r"unknown key `learning_rate` in training"),
    (BASE + "validation:\n  min_f2: 0.8\n", r"unknown key `min_f2` in validation"),
    (BASE + "monitor:\n  methods: {psi: {treshold: 0.1}}\n", r"unknown key `treshold` in monitor.methods.psi"),
    (BASE + "  lr: fast\n", r"Expected `float \| null`, got `str` in training.lr"),
    (BASE + "  epochs: 2.5\n", r"Expected `int \| null`, got `float` in training.epochs"),
    (BASE.replace("features: [a, b]", "features: a"), r"Expected `array`, got `str` in training.features"),
    (BASE.replace("kind: binary", "kind: multiclass"), r"training.kind"),
    (BASE + "validation:\n  min_f1: high\n", r"in validation.min_f1"),
    (BASE + "  lr: .nan\n", r"training.lr must be a finite number"),
    (BASE + "  epochs: 0\n", r"training.epochs must be at least 1"),
    (BASE + "model: twice\n", r"duplicate key 'model'"),
    (BASE.replace("latest: 3", "latest: 3, partitions: [d1]"), r"exactly one of `latest: N` or `partitions"),
    (BASE.replace("target: y", "target: a"), r"target 'a' is also a feature"),
    (BASE + "validation:\n  max_rmse: 3\n", r"validation.max_rmse: rmse is not a binary metric"),
    (BASE + "validation:\n  compare_to: production\n", r"validation needs at least one threshold"),
    (BASE + "validation:\n  min_f1: 0.8\n  compare_to: prod\n", r"validation.compare_to"),
    (BASE + "validation:\n  min_f1: 0.8\n  notify_on_fail: [{webhook: x, slack: '#a'}]\n",
     r"exactly one of `webhook: URL` or `slack"),
    (BASE + "validation:\n  min_f1: 0.8\n  notify_on_fail: [{webhook: ftp://x}]\n", r"not an http\(s\) URL"),
    (BASE + "  schedule: every day\n", r"not a cron expression"),
    (BASE + "  nproc: 2\n", r"nproc: 2 needs `launcher: torchrun`"),
    (BASE + "monitor:\n  model: other\n", r"monitor.model 'other' is not this policy's model 'm'"),
    (BASE + "monitor:\n  on_trigger: {action: airflow}\n", r"airflow needs `url` and `pipeline`"),
    (BASE + "shadow:\n  sample_rate: 2\n", r"shadow.sample_rate must be between 0 and 1"),
    (BASE.replace("model: m", "model: Bad/Name"), r"invalid model name"),
    ("", r"empty policy"),
    ("- training\n", r"a policy is a mapping of sections, got a list"),
])
def test_bad_policy_is_one_error_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=expected) as info:
        load_policy(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_thresholds_keep_a_fixed_order_and_gated_metrics_are_unique() -> None:
    p = parse_policy(BASE + "validation:\n  min_f1: 0.8\n  min_auc: 0.9\n  max_f1: 0.99\n")
    assert p.validation is not None
    assert [k for k, *_ in p.validation.thresholds()] == ["min_auc", "min_f1", "max_f1"]
    assert p.validation.gated_metrics() == ["auc", "f1"]


def test_two_files_for_one_model_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE)
    (tmp_path / "b.yml").write_text(BASE)
    with pytest.raises(PolicyError, match="already has a policy"):
        load_policies(tmp_path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError, match="policies directory not found"):
        load_policies(tmp_path / "nope")
