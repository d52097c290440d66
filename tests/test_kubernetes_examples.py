"""examples/kubernetes/ checked offline: every manifest parses and validates against the Kubernetes
schemas (kubernetes-validate; the Kustomize renderings too, where kubectl is installed), the
Prometheus Operator resources (not in those schemas) are checked structurally, the PrometheusRule
holds exactly examples/prometheus/rules.yml, and every flag, environment variable, port and path the
manifests use exists in our CLI, settings and routes.

    python -m tests.test_kubernetes_examples     # rewrites base/prometheusrule.yaml from rules.yml
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "examples" / "kubernetes"
RULES = ROOT / "examples" / "prometheus" / "rules.yml"
RULE_FILE = K8S / "base" / "prometheusrule.yaml"
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests target
CRDS = {"PodMonitor", "PrometheusRule"}
NOT_KUBERNETES = {"Kustomization"}
RULE_HEADER = ("# Generated from examples/prometheus/rules.yml by `python -m tests.test_kubernetes_examples`;\n"
               "# tests/test_kubernetes_examples.py fails when the two differ.\n")


def prometheus_rule() -> dict[str, Any]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "inferloop", "labels": {"app.kubernetes.io/name": "inferloop"}},
            "spec": {"groups": groups}}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@cache
def base_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in _docs(K8S / "base" / name)]


def _find(kind: str, name: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return next(d for d in docs or base_docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@cache
def _help(*command: str) -> str:
    out = subprocess.run([sys.executable, "-m", "inferloop.cli", *command, "--help"], capture_output=True, text=True,
                         timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def _routes(source: str) -> set[str]:
    return set(re.findall(r'@(?:get|post)\("([^"]+)"', (ROOT / source).read_text()))


# -- parse and validate -----------------------------------------------------------------------------
def test_every_manifest_parses_and_the_kubernetes_ones_validate() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 9
    kinds = set()
    for path in files:
        for doc in _docs(path):
            assert {"apiVersion", "kind"} <= set(doc) and ("metadata" in doc or doc["kind"] in NOT_KUBERNETES), path
            kinds.add(doc["kind"])
            if doc["kind"] in CRDS | NOT_KUBERNETES or path.name == "gateway-gpu.yaml":  # a patch, validated rendered
                continue
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "PodMonitor",
            "PrometheusRule", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= kinds


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the Kustomize overlays")
@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_kustomize_renderings_validate(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for doc in docs:
        assert doc["metadata"].get("namespace", "inferloop") == "inferloop" or doc["kind"] == "Namespace"
        if doc["kind"] not in CRDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    gateway = _container(_find("Deployment", "inferloop-gateway", docs))
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    if overlay == "gpu":
        assert gateway["image"].endswith("-cuda") and env["INFERLOOP_DEVICE"] == "cuda"
        assert gateway["resources"]["requests"]["nvidia.com/gpu"] == gateway["resources"]["limits"]["nvidia.com/gpu"]
        assert "INFERLOOP_TRAINER_TOKEN" in env  # the patch merged into the base list, did not replace it
    else:
        assert gateway["image"].endswith("-cpu") and env["INFERLOOP_DEVICE"] == "cpu"


# -- the Prometheus Operator resources ----------------------------------------------------------------
def test_prometheus_rule_holds_the_rules_file() -> None:
    doc = yaml.safe_load(RULE_FILE.read_text())
    assert doc == prometheus_rule(), "base/prometheusrule.yaml is stale: python -m tests.test_kubernetes_examples"


def test_pod_monitors_select_pods_and_ports_that_serve_metrics() -> None:
    monitors = [d for d in base_docs() if d["kind"] == "PodMonitor"]
    deployments = [d for d in base_docs() if d["kind"] == "Deployment"]
    routes = {"inferloop-gateway": _routes("gateway/transport/endpoints.py"), "inferloop-trainer": _routes("trainer/app.py")}
    assert {m["metadata"]["name"] for m in monitors} == {"inferloop-gateway", "inferloop-trainer"}
    for monitor in monitors:
        spec = monitor["spec"]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and set(spec) <= {"selector", "podMetricsEndpoints"}
        selected = [d for d in deployments
                    if spec["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, monitor["metadata"]["name"]
        ports = {p["name"] for p in _container(selected[0])["ports"]}
        for endpoint in spec["podMetricsEndpoints"]:
            assert set(endpoint) <= {"port", "path", "interval"}
            assert endpoint["port"] in ports and endpoint["path"] in routes[selected[0]["metadata"]["name"]]


def test_hpa_metric_is_what_the_adapter_serves_from_a_gateway_metric() -> None:
    hpa = _find("HorizontalPodAutoscaler", "inferloop-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == _find("Deployment", "inferloop-gateway")["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    (adapter,) = _docs(K8S / "prometheus-adapter.yaml")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert re.match(r"\^?inferloop_requests_total\$?", rule["name"]["matches"])
    metrics_source = (ROOT / "gateway" / "metrics.py").read_text()
    assert 'CounterMetricFamily("inferloop_requests"' in metrics_source  # exposed as inferloop_requests_total
    assert 'ROLE = "primary"' in (ROOT / "gateway" / "transport" / "inference.py").read_text()


# -- everything used exists in our code ---------------------------------------------------------------
def _flags(args: list[str]) -> dict[str, str | None]:
    flags = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            flags[name] = value if value else None
    return flags


def _env_names(container: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(_find("ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def _env_in(text: str) -> set[str]:
    return set(re.findall(r"\b((?:INFERLOOP|AWS)_[A-Z0-9_]+)", text))


def _policies() -> dict[str, Any]:
    from inferloop.policy.schema import parse_policy

    return {name: parse_policy(text, name) for name, text in _find("ConfigMap", "inferloop-policies")["data"].items()}


@pytest.mark.parametrize(("deployment", "command"), [("inferloop-gateway", ("serve",)),
                                                     ("inferloop-trainer", ("trainer", "serve"))])
def test_flags_env_ports_and_paths_exist(deployment: str, command: tuple[str, ...]) -> None:
    dep = _find("Deployment", deployment)
    container = _container(dep)
    args = container["args"]
    assert tuple(args[:len(command)]) == command
    help_text = _help(*command)
    flags = _flags(args[len(command):])
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"{deployment}: {flag} is no flag of {command}"
    # environment: named in the command's help, or read by the S3 store (AWS_*), the trainer's API
    # (its token), or a policy's trigger (token_env)
    known = _env_in(help_text) | _env_in((ROOT / "registry" / "store" / "s3.py").read_text())
    if deployment == "inferloop-trainer":
        known |= _env_in((ROOT / "trainer" / "app.py").read_text())
    else:
        known |= {p.monitor.on_trigger.token_env for p in _policies().values() if p.monitor and p.monitor.on_trigger}
    assert _env_names(container) <= known, _env_names(container) - known
    # ports: the listeners the flags open, named as the probes and Services use them
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(flags["--port"])
    if "--admin-port" in flags:
        assert ports["admin"] == int(flags["--admin-port"])
    routes = _routes("gateway/transport/endpoints.py" if deployment == "inferloop-gateway" else "trainer/app.py")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["port"] in ports and container[probe]["httpGet"]["path"] in routes
    for service in (d for d in base_docs() if d["kind"] == "Service"):
        if service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items():
            assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    # every path a flag names lies on a mounted volume
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    for flag in ("--cache-dir", "--admin-token-file", "--policies", "--state-dir"):
        if flag in flags:
            assert any(str(flags[flag]).startswith(m) for m in mounts), flag


def test_gateway_probes_drain_and_disruption_budget() -> None:
    dep = _find("Deployment", "inferloop-gateway")
    pod = dep["spec"]["template"]["spec"]
    container = _container(dep)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    graceful = float(_flags(container["args"])["--graceful-timeout"] or 0)
    assert pod["terminationGracePeriodSeconds"] > float(sleep[1]) + graceful
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    pdb = _find("PodDisruptionBudget", "inferloop-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["spec"]["replicas"] > 1 and dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_trainer_schedules_come_from_the_mounted_policies() -> None:
    policies = _policies()
    assert policies and all(p.training is not None and p.training.schedule for p in policies.values())
    trainer = _container(_find("Deployment", "inferloop-trainer"))
    assert _flags(trainer["args"])["--policies"] == "/etc/inferloop/policies"


def test_images_pin_torch_from_the_right_index_and_run_as_non_root() -> None:
    pinned = re.search(r"torch==([\d.]+)", (ROOT / "pyproject.toml").read_text()).group(1)
    for name, index in (("Dockerfile", "/whl/cpu"), ("Dockerfile.cuda", "/whl/cu")):
        text = (K8S / name).read_text()
        assert f"ARG TORCH_VERSION={pinned}" in text and '"torch==${TORCH_VERSION}"' in text, name
        assert re.search(rf"ARG TORCH_INDEX=https://download\.pytorch\.org{index}", text), name
        user = re.findall(r"^USER (\S+)", text, re.M)
        assert user and user[-1].isdigit() and user[-1] != "0", name
        assert str(_find("Deployment", "inferloop-gateway")["spec"]["template"]["spec"]["securityContext"]
                   ["runAsUser"]) == user[-1]


def test_deploy_doc_names_only_flags_and_variables_that_exist() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    known = _help("serve") + _help("trainer", "serve") + (ROOT / "trainer" / "app.py").read_text()
    for flag in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", doc)):
        assert re.search(rf"(?<![\w-]){flag}(?![\w-])", known), flag
    for name in _env_in(doc) - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}:  # read by botocore itself
        assert name in known or name in (ROOT / "registry" / "store" / "s3.py").read_text(), name


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as in rules.yml."""


_BlockDumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s
                                                                  else None))

if __name__ == "__main__":
    RULE_FILE.write_text(RULE_HEADER + yaml.dump(prometheus_rule(), Dumper=_BlockDumper, sort_keys=False, width=110))
    print(f"wrote {RULE_FILE}")
