"""The Locust scenario runs with one command (it starts its own target) and, with admin swaps
during traffic, every request succeeds and both versions answer."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("locust") is None, reason="locust is in the test extra")
def test_locust_headless_with_swaps(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "locust", "--headless", "-f", str(ROOT / "loadtests" / "locustfile.py"),
                        "-u", "6", "-r", "6", "-t", "8s", "--swap-every", "2", "--only-summary"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    aggregated = next(line for line in out.splitlines() if line.strip().startswith("Aggregated"))
    requests, failures = re.search(r"Aggregated\s+(\d+)\s+(\d+)\(", aggregated).groups()
    assert int(requests) > 100 and int(failures) == 0, aggregated
    assert "tiny-regression v1" in out and "tiny-regression v2" in out
    assert re.search(r"admin swaps: [1-9]", out)
