"""The GPU gateway benchmark's plumbing, checked without a GPU: scripts/gpu_bench.sh parses, the
driver takes --device and the client/server core sets, every server is told the device, and the
rendered header keeps the CPU wording while naming the device when it is not the CPU."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.bench_gateway import Sample, core_count, render, server_commands

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_script_parses() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_bench.sh")], check=True)


def test_bench_gateway_help_lists_device_and_cores() -> None:
    out = subprocess.run([sys.executable, "-m", "loadtests.bench_gateway", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "--device {cpu,cuda}" in out
    assert "--client-core" in out and "--server-core" in out


def test_bare_server_takes_device() -> None:
    out = subprocess.run([sys.executable, "-m", "loadtests.bare_server", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "--device" in out


@pytest.mark.parametrize(("cores", "count"), [("0", 1), ("0-3", 4), ("4-5", 2), ("0,2,4-5", 4)])
def test_core_count(cores: str, count: int) -> None:
    assert core_count(cores) == count


def test_every_server_gets_the_device(tmp_path: Path) -> None:
    commands = server_commands("file:///x", tmp_path, [], "cuda")
    for name, cmd in commands.items():
        assert cmd[cmd.index("--device") + 1] == "cuda", name


def _render(client: str, server: str, device: str | None) -> str:
    sample = Sample(1000.0, 1.0, 2.0, 0, 100.0)
    results = {"bare-constant": [sample], "bare-forward": [sample], "gateway-batched": [sample]}
    args = argparse.Namespace(client_core=client, server_core=server, connections=64, runs=1, duration=1.0)
    return render(results, "python -m loadtests.bench_gateway", args, ("0", "0"), device)


def test_render_cpu_header_unchanged() -> None:
    text = _render("0", "1", None)
    assert "wrk pinned to core 0, servers to core 1; 64 connections" in text
    assert "Device:" not in text


def test_render_names_device_and_client_threads() -> None:
    text = _render("0-3", "4-5", "cuda (NVIDIA H200), torch 2.11.0+cu130")
    assert "wrk (4 threads) pinned to cores 0-3, servers to cores 4-5" in text
    assert "Device: forwards on cuda (NVIDIA H200), torch 2.11.0+cu130" in text


def test_large_swap_reads_the_gateways_gpu_memory_from_nvidia_smi() -> None:
    """bench_large_swap --device cuda compares the gateway's GPU memory before and after the swaps:
    only the gateway's own rows count (other processes share the GPU), and no row is NaN, not 0."""
    from loadtests.bench_large_swap import gpu_mb

    smi = "4242, 1630\n17, 9000\n4242, 12\n[Not Supported], [N/A]\n"
    assert gpu_mb(4242, smi) == 1642.0
    assert gpu_mb(17, smi) == 9000.0
    assert gpu_mb(99, smi) != gpu_mb(99, smi)  # NaN: the process holds no GPU memory nvidia-smi can see
    out = subprocess.run([sys.executable, "-m", "loadtests.bench_large_swap", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "--device" in out
