"""One virtual environment per peer under `loadtests/.venvs/<peer>`, created on first use.

torch is installed first, pinned to the local CPU wheel (any other version would pull a CUDA
build of several GB); the peer's own packages come after it, from PyPI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"
VENVS = Path(__file__).resolve().parent.parent / ".venvs"


def python_of(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def _spec(packages: list[str]) -> str:
    return " ".join([TORCH, *packages]) + "\n"


def is_ready(peer: str, packages: list[str]) -> bool:
    """The venv exists and was completed with exactly these packages."""
    try:
        return (VENVS / peer / ".ready").read_text() == _spec(packages)
    except OSError:
        return False


def ensure(peer: str, packages: list[str], log: Path) -> Path:
    """Create the venv if it is not complete yet; return its python. Raises CalledProcessError."""
    root = VENVS / peer
    py = python_of(peer)
    if is_ready(peer, packages):
        return py
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        def run(*cmd: str | Path) -> None:
            out.write(f"$ {' '.join(map(str, cmd))}\n")
            out.flush()
            subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, check=True)

        if not py.exists():
            run(sys.executable, "-m", "venv", root)
        run(py, "-m", "pip", "install", "-q", TORCH)
        run(py, "-m", "pip", "install", "-q", TORCH, *packages)
    (root / ".ready").write_text(_spec(packages))
    return py
