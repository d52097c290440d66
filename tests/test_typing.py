"""The type checker runs in CI: `mypy` over the whole `inferloop` namespace with 0 errors (strict
flags; see pyproject's [tool.mypy]). mypy cannot follow pyproject's package-dir mapping, so it
checks a farm of links that lays the folders out as they are installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors(tmp_path: Path) -> None:
    package = tmp_path / "inferloop"
    package.mkdir()
    for entry in (ROOT / "inferloop").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for folder in ("registry", "gateway", "trainer"):
        (package / folder).symlink_to(ROOT / folder)
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(tmp_path / ".mypy_cache"), "-p", "inferloop"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout
