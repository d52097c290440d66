"""Observability as an operator sees it: a real Prometheus server (Debian's package) scrapes a real
gateway and a real trainer; the documented metric names are there with the documented labels;
`promtool check metrics` accepts our exposition and `promtool check rules` our rules; every panel of
the Grafana dashboard queries a metric we export; the CI templates run commands that exist."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from inferloop.registry import MLP, Registry
from inferloop.trainer.app import create_app as create_trainer_app
from inferloop.trainer.service import ServiceSettings, TrainerService

from .conftest import free_port
from .gateway_harness import ThreadedGateway, eventually, settings_for
from .trainer_support import ServerThread

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "examples" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "inferloop-dashboard.json"

DOCUMENTED = {  # name -> labels the design promises
    "inferloop_requests_total": {"model", "role", "code"},
    "inferloop_request_duration_seconds_bucket": {"model", "le"},
    "inferloop_inference_duration_seconds_bucket": {"model", "role", "le"},
    "inferloop_batch_size_bucket": {"model", "le"},
    "inferloop_model_info": {"model", "stage", "version"},
    "inferloop_model_swaps_total": {"model"},
    "inferloop_shadow_dropped_total": {"model"},
    "inferloop_shadow_errors_total": {"model"},
    "inferloop_shadow_prediction_psi": {"model"},
    "inferloop_feature_psi": {"model", "feature"},
    "inferloop_feature_psi_critical": {"model", "feature"},
    "inferloop_feature_bin_total": {"model", "feature", "bin"},
    "inferloop_drift_triggers_total": {"model"},
}
ALWAYS_PRESENT_FAMILIES = {"inferloop_model_load_failures_total", "inferloop_registry_poll_errors_total"}

needs_prometheus = pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("promtool")),
                                      reason="Debian's prometheus package is not installed (.ci/run installs it)")


def _series(text: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            out.setdefault(m.group(1), []).append(labels)
    return out


def _families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory):
    """A gateway with production and shadow versions, a drift policy, traffic that closed windows."""
    tmp = tmp_path_factory.mktemp("obs")
    uri = f"file://{tmp / 'registry'}"
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(4000, 8)).astype(np.float32))
    with Registry.open(uri) as reg:
        for seed, stage in ((1, "production"), (2, "shadow")):
            torch.manual_seed(seed)
            with reg.track("m") as run:
                v = run.register(MLP(8, 1, [16]), example_inputs=x[:8], reference=x)
            reg.promote("m", v, stage)
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "m.yaml").write_text("""model: m
training: {data: {source: d, latest: 1}, features: [a, b, c, d, e, f, g, h], target: y, kind: regression}
monitor: {window: 200, min_samples: 100, on_trigger: {action: webhook, url: "http://127.0.0.1:9/none"}}
shadow: {min_requests: 10}
""")
    settings = settings_for(uri, ["m"], tmp, shadow={"budget": 1.0, "evaluate_interval_s": 0.2},
                            drift={"policies": str(policies), "evaluate_interval_s": 0.2})
    with ThreadedGateway(settings) as gw:
        gw.wait_ready()
        eventually(lambda: gw.plane.models["m"].stages["shadow"].serving_version == 2, what="shadow")
        rows = rng.normal(size=(20, 8)).astype(np.float32).tolist()
        for _ in range(30):
            assert gw.client.post("/v1/models/m/predict", json={"instances": rows}).status_code == 200
        eventually(lambda: "inferloop_feature_psi{" in gw.client.get("/metrics").text, what="a closed window")
        eventually(lambda: "inferloop_shadow_prediction_psi{" in gw.client.get("/metrics").text, what="report")
        yield gw


def test_documented_metrics_and_labels(live_gateway) -> None:
    text = live_gateway.client.get("/metrics").text
    series = _series(text)
    for name, labels in DOCUMENTED.items():
        assert name in series, f"{name} missing"
        assert labels <= set(series[name][0]), f"{name} labels {series[name][0]}"
    assert ALWAYS_PRESENT_FAMILIES <= _families(text) | {n + "_total" for n in _families(text)}
    roles = {s["role"] for s in series["inferloop_inference_duration_seconds_bucket"]}
    assert roles == {"primary", "shadow"}
    bins = {s["bin"] for s in series["inferloop_feature_bin_total"] if s["feature"] == "x0"}
    assert "missing" in bins and len(bins) <= 12  # bounded cardinality


@needs_prometheus
def test_promtool_accepts_metrics_and_rules(live_gateway, tmp_path) -> None:
    exposition = live_gateway.client.get("/metrics").text
    r = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_prometheus
def test_a_real_prometheus_scrapes_gateway_and_trainer(live_gateway, tmp_path) -> None:
    service = TrainerService.open(ServiceSettings(registry=f"file://{tmp_path / 'treg'}",
                                                  policies=str(tmp_path), state_dir=str(tmp_path / "state")))
    with ServerThread(create_trainer_app(service)) as trainer:
        port = free_port()
        config = {"global": {"scrape_interval": "1s"},
                  "scrape_configs": [
                      {"job_name": "gateway", "static_configs": [{"targets": [live_gateway.url[7:]]}]},
                      {"job_name": "trainer", "static_configs": [{"targets": [trainer.url[7:]]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            api = f"http://127.0.0.1:{port}/api/v1"

            def query(q: str) -> list:
                try:  # until its TSDB is open Prometheus answers 503 in plain text
                    data = httpx.get(f"{api}/query", params={"query": q}, timeout=5).json()
                except (httpx.HTTPError, ValueError):
                    return []
                return data.get("data", {}).get("result", [])

            ups = eventually(lambda: (r := query("up")) and len(r) == 2 and all(x["value"][1] == "1" for x in r)
                             and r, timeout=60, what="both targets up")
            assert {x["metric"]["job"] for x in ups} == {"gateway", "trainer"}
            assert eventually(lambda: query('inferloop_requests_total{model="m",role="primary",code="200"}'),
                              timeout=30, what="requests series")
            assert eventually(lambda: query("inferloop_feature_bin_total"), timeout=30, what="bin counters")
            time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(20)


def test_every_dashboard_query_uses_an_exported_metric(live_gateway) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = set(_series(live_gateway.client.get("/metrics").text))
    exported |= {n.rsplit("_bucket", 1)[0] for n in exported if n.endswith("_bucket")}
    exported |= {f"{n}_total" for n in _families(live_gateway.client.get("/metrics").text)}
    exported |= _families(live_gateway.client.get("/metrics").text)
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    panels = dashboard["panels"]
    assert len(panels) >= 8
    for panel in panels:
        for target in panel["targets"]:
            names = set(re.findall(r"\b(inferloop[a-z_:]*[a-z0-9_])", target["expr"]))
            assert names, panel["title"]
            for name in names:
                assert name in exported or name in recorded, f"panel {panel['title']!r} uses unknown {name}"


def test_ci_templates_are_valid_and_run_real_commands() -> None:
    from inferloop.cli import build_parser

    parser = build_parser()
    seen = 0
    for path in (ROOT / "examples" / "github").glob("*.yml"):
        workflow = yaml.safe_load(path.read_text())
        assert workflow["jobs"] and (True in workflow or "on" in workflow)
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                for line in str(step.get("run", "")).splitlines():
                    line = line.strip().split("|")[0].strip()
                    if not line.startswith("inferloop "):
                        continue
                    argv = [a for a in shlex.split(line.replace("${MODEL}", "m").replace("$p", "p.yaml"))[1:]]
                    parser.parse_args(argv)  # SystemExit on an unknown verb or flag
                    seen += 1
    assert seen >= 1
