"""The Locust file is a tool for any gateway: with one command it starts its own target (and, with
admin swaps during traffic, every request succeeds and both versions answer); pointed at a gateway
serving models it has never seen (several named inputs of other datatypes, a tabular model of
another width), it discovers them, sends payloads shaped like each version's own inputs, and every
request succeeds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inferloop.registry import MLP, Registry

from .gateway_harness import TOKEN, GatewayProcess

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = str(ROOT / "loadtests" / "locustfile.py")
needs_locust = pytest.mark.skipif(shutil.which("locust") is None, reason="locust is in the test extra")


def _locust(args: list[str], cwd: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "locust", "--headless", "-f", LOCUSTFILE, "--only-summary", *args],
                       cwd=cwd, capture_output=True, text=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out


def _totals(out: str) -> tuple[int, int]:
    aggregated = next(line for line in out.splitlines() if line.strip().startswith("Aggregated"))
    requests, failures = re.search(r"Aggregated\s+(\d+)\s+(\d+)\(", aggregated).groups()
    return int(requests), int(failures)


@needs_locust
def test_locust_headless_with_swaps(tmp_path: Path) -> None:
    out = _locust(["-u", "6", "-r", "6", "-t", "8s", "--swap-every", "2", "--swap-model", "tiny-regression",
                   "--payloads", str(ROOT / "loadtests" / "payloads")], tmp_path)
    requests, failures = _totals(out)
    assert requests > 100 and failures == 0, out[-3000:]
    assert re.search(r"tiny-churn v1: .*; payloads from recorded payload file", out), out[-3000:]
    assert "tiny-regression v1" in out and "tiny-regression v2" in out
    assert re.search(r"admin swaps: [1-9]", out)


class StoreRevenue(torch.nn.Module):
    """Two named inputs in one dict: INT64 ids through an embedding (an id outside the table fails)
    beside FP32 dense features."""

    def __init__(self) -> None:
        super().__init__()
        self.store = torch.nn.Embedding(20, 4)
        self.head = torch.nn.Linear(4 + 5, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([self.store(inputs["store_id"]), inputs["dense"]], dim=1))


class MaskedSequence(torch.nn.Module):
    """A variable-length FP16 sequence and a BOOL mask of the same length: a masked mean."""

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(torch.float32)
        return (values.to(torch.float32) * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)


def _register_unseen_models(uri: str) -> dict[str, int]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    versions = {}
    with Registry.open(uri) as reg:
        with reg.track("store-revenue") as run:
            def inputs(n: int) -> dict[str, torch.Tensor]:
                return {"store_id": torch.randint(10, 20, (n,), generator=g), "dense": torch.randn(n, 5, generator=g)}
            versions["store-revenue"] = run.register(StoreRevenue().eval(), example_inputs=inputs(16),
                                                     reference=inputs(1000))
        with reg.track("masked-mean") as run:
            values = torch.randn(600, 7, generator=g).half()
            mask = torch.rand(600, 7, generator=g) > 0.3
            mask[:, 0] = True
            versions["masked-mean"] = run.register(MaskedSequence(), example_inputs=(values[:16], mask[:16]),
                                                   reference=(values, mask), output_kind="none",
                                                   dynamic_axes={"values": [1], "mask": [1]})
        with reg.track("wide-churn") as run:
            x = torch.from_numpy(np.random.default_rng(3).normal(5.0, 3.0, size=(2000, 11)).astype(np.float32))
            versions["wide-churn"] = run.register(MLP(11, 1, [16]), example_inputs=x[:8], reference=x,
                                                  feature_names=[f"f{i}" for i in range(11)], output_kind="binary")
        for name, version in versions.items():
            reg.promote(name, version, "production")
    return versions


@needs_locust
def test_locust_against_a_gateway_with_models_it_has_never_seen(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'registry'}"
    versions = _register_unseen_models(uri)
    args = ["--registry", uri, "--cache-dir", str(tmp_path / "cache"), "--poll-interval", "0.5"]
    for name in versions:
        args += ["--model", name]
    with GatewayProcess(args, env={"INFERLOOP_ADMIN_TOKEN": TOKEN}) as gw:
        gw.wait_ready()
        out = _locust(["--host", gw.url, "--registry", uri, "--admin-token", TOKEN, "--drift-per-minute", "1",
                       "-u", "6", "-r", "6", "-t", "6s"], tmp_path)
        # --models narrows the set: only the named model gets requests
        narrowed = _locust(["--host", gw.url, "--models", "masked-mean", "-u", "2", "-r", "2", "-t", "2s"], tmp_path)
    requests, failures = _totals(out)
    assert requests > 50 and failures == 0, out[-3000:]
    assert re.search(r"store-revenue v1: 2 input\(s\) store_id INT64 \[-1\], dense FP32 \[-1, 5\]; "
                     r"payloads from warm-up inputs \+ reference bins", out), out[-3000:]
    assert re.search(r"wide-churn v1: .*; payloads from reference bins", out), out[-3000:]
    for name in versions:  # per model: its own rows in Locust's table, its own version counts
        assert f"/v2/models/{name}/infer" in out and re.search(rf"{name} v1: [1-9]", out), out[-3000:]
        assert re.search(rf"drift {name}: \{{\"state\"", out) and f"shadow {name}: " in out, out[-3000:]
    assert "/v1/models/wide-churn/predict" in out  # the tabular model also takes /v1 rows
    requests, failures = _totals(narrowed)
    assert requests > 0 and failures == 0, narrowed[-3000:]
    assert "masked-mean v1" in narrowed and "store-revenue v1" not in narrowed
    assert "payloads follow the signatures only" in narrowed  # no registry given: said so


def test_payloads_follow_each_versions_reference_bins(tmp_path: Path) -> None:
    """Without drift asked for, every column drift watches (tabular features; mean and norm of float
    inputs; a one-value integer id) is distributed like the version's reference: PSI well under the
    drift monitor's 0.1 threshold."""
    from inferloop.registry.drift_columns import input_columns, input_matrix, is_tabular
    from inferloop.registry.reference import count_bins
    from loadtests.model_inputs import ModelMeta, ModelSampler, TensorMeta

    uri = f"file://{tmp_path / 'registry'}"
    _register_unseen_models(uri)
    checked = []
    with Registry.open(uri) as reg:
        for name in ("store-revenue", "masked-mean", "wide-churn"):
            manifest = reg.get_manifest(name, 1)
            sig = manifest.signature
            meta = ModelMeta(name=name, inputs=[TensorMeta(t.name, t.datatype, t.shape) for t in sig.tensor_inputs()],
                             parameters={"features": [f.name for f in sig.features]}, version=1)
            body = ModelSampler(meta, manifest).infer_body(np.random.default_rng(0), 4000, 0.0)
            arrays = [np.asarray(t["data"], dtype=np.float64).reshape(t["shape"]) for t in body["inputs"]]
            columns = input_matrix(sig, arrays, is_tabular(sig))
            bins = {b.name: b for b in manifest.reference.features}
            for j, column in enumerate(input_columns(sig)):
                if column.startswith("mask:"):  # BOOL: sent as the recorded rows, not drawn from the bins
                    continue
                counts = count_bins(np.asarray(bins[column].edges), columns[:, j])
                p = np.clip(counts / counts.sum(), 1e-4, None)
                e = np.clip(np.asarray(bins[column].fractions), 1e-4, None)
                psi = float(((p - e) * np.log(p / e)).sum())
                assert psi < 0.05, (name, column, psi)
                checked.append(column)
    assert {"store_id:mean", "dense:norm", "values:mean", "values:norm", "f10"} <= set(checked)
