"""The benchmarks' concurrency sweep and `--baseline-ref` plumbing, checked without timing anything:
connection levels parse (bad ones are a one-line usage error), the sweep reports render every level
with issue 14's goals judged from the figures given, and a commit checked out beside the working
tree runs its own code under either package layout, which `verify` proves from the imports."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import gateway_source
from loadtests.bench_gateway import Sample, connection_levels, label, render, render_sweep, server_commands
from loadtests.peers.configs import CONFIGS
from loadtests.peers.report import Result, sweep_goals, sweep_table
from loadtests.peers.wrk import Sample as PeerSample

ROOT = Path(__file__).resolve().parents[1]
FLAT = "9ff7b56"  # the last commit with top-level `registry`/`gateway` packages (28b9b2a made the namespace)


def _has(commit: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True).returncode == 0


def test_connection_levels_parse_one_or_many() -> None:
    assert connection_levels("64") == [64]
    assert connection_levels("1,8,32,64,256") == [1, 8, 32, 64, 256]
    for bad in ("", "0", "8,8", "x", "-1,4"):
        with pytest.raises(argparse.ArgumentTypeError):
            connection_levels(bad)


@pytest.mark.parametrize("module", ["loadtests.bench_gateway", "loadtests.bench_peers"])
def test_bad_connections_is_a_usage_error(module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--connections", "8,0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "--connections" in out.stderr and "Traceback" not in out.stderr


def test_unknown_baseline_ref_is_a_usage_error() -> None:
    out = subprocess.run([sys.executable, "-m", "loadtests.bench_gateway", "--baseline-ref", "no-such-ref-xyz"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "no-such-ref-xyz" in out.stderr and "Traceback" not in out.stderr


def test_baseline_server_reads_its_own_registry(tmp_path: Path) -> None:
    commands = server_commands("file:///here", tmp_path, ["--max-batch-delay-ms", "1"], gateway_uri="file:///gw",
                               baseline_uri="file:///base")
    assert commands["gateway-baseline"][commands["gateway-baseline"].index("--registry") + 1] == "file:///base"
    assert commands["gateway-batched"][commands["gateway-batched"].index("--registry") + 1] == "file:///gw"
    assert commands["bare-forward"][commands["bare-forward"].index("--registry") + 1] == "file:///here"
    assert "--max-batch-delay-ms" in commands["gateway-baseline"]
    assert "gateway-baseline" not in server_commands("file:///here", tmp_path, [])
    several = server_commands("file:///here", tmp_path, [], baseline_uris=["file:///b1", "file:///b2"])
    assert several["gateway-baseline-2"][several["gateway-baseline-2"].index("--registry") + 1] == "file:///b2"
    assert label("gateway-baseline-2").startswith("(g) ")


def _samples(rps: float, p50: float, p99: float) -> list[Sample]:
    return [Sample(rps, p50, p99, 0, 50.0), Sample(rps, p50, p99, 0, 50.0)]


def _level(gateway_rps: float, gateway_p50: float) -> dict[str, list[Sample]]:
    return {"bare-constant": _samples(1000, 0.30, 1.0), "bare-forward": _samples(500, 0.40, 2.0),
            "gateway-batched": _samples(gateway_rps, gateway_p50, 1.5),
            "gateway-baseline": _samples(gateway_rps / 2, gateway_p50 * 2, 3.0)}


def _args(**kw: object) -> argparse.Namespace:
    base = {"client_core": "0", "server_core": "1", "runs": 2, "duration": 3.0, "warmup": 1.0, "connections": 64}
    return argparse.Namespace(**{**base, **kw})


def test_sweep_report_judges_each_level() -> None:
    # 1 connection: p50 0.48 = 1.2 × (b)'s 0.40 (met), req/s 0.6 × (a) (missed); 8: 1.1 × (a) (met)
    sweep = {1: _level(600, 0.48), 8: _level(1100, 0.5), 64: _level(2500, 1.0)}
    text = render_sweep(sweep, "python -m loadtests.bench_gateway --connections 1,8,64",
                        _args(connections=[1, 8, 64]), ("1", "1"), None,
                        {"gateway": "working tree", "gateway-baseline": "commit abc"})
    assert "| 1 | (c) gateway, batching on | 600 | 0.60 | 0.480 | 1.20 |" in text
    assert "1.20 × per run (met); req/s ≥ 0.7 × (a): 0.60 × per run (**missed**)" in text
    assert "- 8 connections: req/s ≥ 1.0 × (a): 1.10 × per run (met)" in text
    assert "req/s 2.00 × (f) per run (met)" in text  # 64: against the baseline commit
    assert "| 64 | (f) | 2.00 | 0.50 | 0.50 |" in text  # (c) ÷ (f)
    assert "(f) from the commit abc" in text
    for level in ("## 1 connection", "## 8 connections", "## 64 connections"):
        assert level in text


def test_single_level_report_keeps_its_form_and_adds_the_baseline_ratio() -> None:
    results = _level(2500, 1.0) | {"gateway-baseline-2": _samples(5000, 0.5, 0.75)}
    text = render(results, "python -m loadtests.bench_gateway", _args(), ("0", "0"), None,
                  {"gateway": "commit c", "gateway-baseline": "commit f", "gateway-baseline-2": "commit g"})
    assert text.startswith("# Gateway benchmark: single-row OIP v2 infer\n")
    assert "64 connections, 2 runs × 3 s per server" in text
    assert "(c) against (f), per run: req/s 2.00 ×, p50 0.50 ×, p99 0.50 ×" in text
    assert "(c) against (g), per run: req/s 0.50 ×, p50 2.00 ×, p99 2.00 ×" in text
    assert "(f) from the commit f; (g) from the commit g" in text


def _result(peer: str, variant: str, level: int, rps: float, p50: float, p99: float, ref_rps: float = 1000,
            ref_p50: float = 0.4) -> Result:
    config = next(c for c in CONFIGS if c.peer == peer and (c.variant == variant or variant == "-"))
    sample = PeerSample(rps, p50, p99, int(rps), 0)
    ref = [] if peer == "bare" else [PeerSample(ref_rps, ref_p50, 2.0, int(ref_rps), 0)]
    return Result(config, connections=level, samples=[sample], reference=ref)


def test_peer_sweep_goals_use_ratios_to_the_ceilings_alongside() -> None:
    best = "best: batch 64/2 ms, warn log"
    results = [
        _result("bare", "-", 8, 1000, 0.4, 2.0), _result("echo", "-", 8, 2000, 0.3, 1.0),
        _result("gateway", "batching on", 8, 2400, 0.5, 1.2), _result("torchserve", best, 8, 1000, 0.9, 5.0),
        _result("bare", "-", 64, 1000, 0.4, 2.0), _result("echo", "-", 64, 2000, 0.3, 1.0),
        _result("gateway", "batching on", 64, 5000, 1.0, 6.0), _result("torchserve", best, 64, 2000, 2.0, 5.0),
    ]
    refusing = _result("fastapi", "best: no access log", 64, 9000, 0.1, 0.2)
    refusing.samples[0].errors = 500  # over 1 % of its 9000 requests: fast refusals, not a peer to beat
    results.append(refusing)
    goals = sweep_goals(results)
    # 8: gateway 2.4 × bare, echo 2.0 × bare -> 1.2 × echo (met); TorchServe 1.0 × bare -> 2.4 × (met)
    assert "- 8 connections: req/s 1.20 × the echo ceiling (goal ≥ 1: met); 2.40 × the best peer" in goals
    # 64: p99 6.0 ms against TorchServe's 5.0 ms: missed
    assert "p99 6.00 ms against the lowest peer p99 5.00 ms" in goals and "(goal below every peer's: **missed**)" in goals
    assert "not counted as peers here (over 1 % of requests failed): FastAPI + uvicorn [best: no access log] (500 of 9,000)" in goals
    table = sweep_table(results)
    assert "| 8 | inferloop gateway | batching on | 2,400 | 2.40 | 1.20 | 0.50 | 1.25 | 1.20 | 0 |" in table


def test_best_selection_keeps_both_ceilings_and_the_gateway_defaults() -> None:
    from loadtests.bench_peers import select

    chosen = select(None, best=True)
    keys = {(c.peer, c.variant) for c in chosen}
    assert {("bare", "-"), ("echo", "-"), ("gateway", "batching on")} <= keys
    assert ("torchserve", "best: batch 64/2 ms, warn log") in keys and ("torchserve", "stock") not in keys
    assert {c.peer for c in select("torchserve", best=True)} == {"bare", "torchserve"}


@pytest.mark.skipif(not _has(FLAT), reason=f"{FLAT} is not in this clone")
@pytest.mark.parametrize("ref", [FLAT, "HEAD"])
def test_checkout_runs_its_own_code_in_either_layout(ref: str, tmp_path: Path) -> None:
    with gateway_source.checkout(ref, tmp_path) as source:
        assert source.namespaced == (ref == "HEAD")
        gateway_source.verify(source)  # raises unless cli, registry and gateway import from the checkout
        uri = gateway_source.make_registry(source, tmp_path / "registry")
        assert any(Path(uri.removeprefix("file://")).iterdir())
        tree = source.root
    assert not tree.exists()
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert str(tree) not in listed


def test_verify_catches_a_checkout_importing_the_working_tree(tmp_path: Path) -> None:
    """The namespaced layout put on PYTHONPATH as it is (what `bench_peers --gateway-ref` did with a
    `git archive`): `inferloop` comes from the checkout but `inferloop.gateway` from the project's
    editable install, i.e. from this working tree. verify must refuse it."""
    with gateway_source.checkout("HEAD", tmp_path) as source:
        plain = gateway_source.Source(source.root, source.root, str(source.root), True, "plain tree")
        with pytest.raises(RuntimeError, match="imports from"):
            gateway_source.verify(plain)
