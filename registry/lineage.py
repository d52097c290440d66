"""Automatic lineage capture: code commit, environment, data digests."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata

from inferloop.registry.manifest import CodeLineage, DataLineage, DataPartition, Environment


def _git(*args: str, cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def capture_code(cwd: str | None = None) -> CodeLineage:
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return CodeLineage(commit=None, dirty=False)
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return CodeLineage(commit=commit, dirty=bool(status), repository=_git("rev-parse", "--show-toplevel", cwd=cwd))


def packages_digest() -> str:
    """Digest of every installed distribution's name==version, sorted: changes when the environment does."""
    seen = sorted({f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in metadata.distributions()})
    return hashlib.sha256("\n".join(seen).encode()).hexdigest()


def capture_environment(device: str = "cpu") -> Environment:
    import torch

    return Environment(
        python=platform.python_version(),
        torch=str(torch.__version__),
        cuda=torch.version.cuda if torch.cuda.is_available() else None,
        platform=f"{sys.platform}-{platform.machine()}-{platform.release()}",
        packages_digest=packages_digest(),
        device=device,
    )


def data_lineage(uri: str, partitions: list[DataPartition]) -> DataLineage:
    h = hashlib.sha256()
    for p in partitions:
        h.update(f"{p.name}\0{p.digest}\n".encode())
    return DataLineage(uri=uri, partitions=list(partitions), digest=h.hexdigest())


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
