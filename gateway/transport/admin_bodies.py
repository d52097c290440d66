"""Request bodies of the admin endpoints (decoded with msgspec; the OpenAPI document is built from them)."""

from __future__ import annotations

import msgspec


class PromoteBody(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    stage: str = "production"
    reason: str = ""
    expected_version: int | None | msgspec.UnsetType = msgspec.UNSET
    actor: str | None = None


class SamplingBody(msgspec.Struct, forbid_unknown_fields=True):
    sample_rate: float
    reason: str = ""
    actor: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError("sample_rate must be between 0 and 1")


class RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    stage: str = "production"
    reason: str = ""
    to_version: int | None = None
    actor: str | None = None
