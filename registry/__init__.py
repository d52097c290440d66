"""inferloop model registry: immutable content-addressed versions, CAS stage pointers, audit log.

Imports nothing from `gateway` or `trainer`.
"""

from __future__ import annotations

from typing import Any

from inferloop.registry.core import AsyncRegistry, PointerState
from inferloop.registry.errors import (
    Conflict,
    CorruptArtifact,
    InvalidName,
    InvalidRegistryURI,
    NotFound,
    RegistryError,
    Unavailable,
    UnsupportedArtifact,
)
from inferloop.registry.manifest import StagePointer, VersionManifest
from inferloop.registry.names import STAGES
from inferloop.registry.store import DEFAULT_REGISTRY_URI
from inferloop.registry.sync import Registry
from inferloop.registry.tracking import Run


def __getattr__(name: str) -> Any:
    # torch is imported only when a model is built, so the CLI and pollers start fast.
    if name in ("MLP", "build_module"):
        from inferloop.registry import architectures

        return getattr(architectures, name)
    raise AttributeError(name)


__all__ = [
    "DEFAULT_REGISTRY_URI", "MLP", "STAGES", "AsyncRegistry", "Conflict", "CorruptArtifact", "InvalidName",
    "InvalidRegistryURI", "NotFound", "PointerState", "Registry", "RegistryError", "Run", "StagePointer",
    "Unavailable", "UnsupportedArtifact", "VersionManifest", "build_module",
]
