"""`promtool test rules` for the example Prometheus rules: every recording rule has its value checked
on synthetic series, every alert is seen both firing and not firing. In particular the error ratio is
0 (not "no data") without a single 5xx, and a latency quantile is absent (not NaN) where nothing was
timed, e.g. a shadow that never runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "examples" / "prometheus" / "rules.yml"
TESTS = ROOT / "examples" / "prometheus" / "rules_test.yml"

needs_promtool = pytest.mark.skipif(not shutil.which("promtool"),
                                    reason="promtool (Debian's prometheus package) is not installed (.ci/run installs it)")


def _rules() -> tuple[set[str], set[str]]:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return {r["record"] for r in rules if "record" in r}, {r["alert"] for r in rules if "alert" in r}


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    r = subprocess.run(["promtool", "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_rule_has_a_unit_test() -> None:
    records, alerts = _rules()
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    assert yaml.safe_load(TESTS.read_text())["rule_files"] == [RULES.name]
    # a recording rule is tested when its own series is queried and a value is expected
    checked = {t["expr"] for case in tests for t in case.get("promql_expr_test", []) if t.get("exp_samples")}
    assert records - checked == set(), "recording rules without an expected value"
    alert_tests = [t for case in tests for t in case.get("alert_rule_test", [])]
    fired = {t["alertname"] for t in alert_tests if t.get("exp_alerts")}
    quiet = {t["alertname"] for t in alert_tests if not t.get("exp_alerts")}
    assert alerts - fired == set(), "alerts never seen firing"
    assert alerts - quiet == set(), "alerts never seen staying quiet"
    assert (fired | quiet) - alerts == set(), "tests of alerts that do not exist"
