"""Storage keys: the one place that knows the registry's layout (DESIGN.md "Registry")."""

from __future__ import annotations

from inferloop.registry.names import check_digest, check_model_name, check_stage, check_version

MODELS = "models/"
CHANGES = "changes.json"  # the registry-wide change record (registry.change_record)


def blob(digest: str) -> str:
    check_digest(digest)
    return f"blobs/sha256/{digest[:2]}/{digest}"


def versions(name: str) -> str:
    return f"models/{check_model_name(name)}/versions/"


def manifest(name: str, version: int) -> str:
    return f"{versions(name)}{check_version(version):08d}.json"


def identity(name: str, identity_digest: str) -> str:
    """Index from a (artifact, lineage) identity to its version, so re-registration is a lookup."""
    return f"models/{check_model_name(name)}/identities/{check_digest(identity_digest)}.json"


def stage(name: str, stage_name: str) -> str:
    return f"models/{check_model_name(name)}/stages/{check_stage(stage_name)}.json"


def events(name: str) -> str:
    return f"models/{check_model_name(name)}/events/"


def event(name: str, seq: int) -> str:
    # Keyed by sequence, not time: the hash chain needs a total order that a create-only write enforces.
    return f"{events(name)}{seq:010d}.json"
