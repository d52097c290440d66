"""Validation of everything that becomes part of a storage key, so no input can escape its prefix."""

from __future__ import annotations

import re

from inferloop.registry.errors import InvalidName

STAGES = ("staging", "shadow", "production")

_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise InvalidName(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    return stage


def check_version(version: int | str) -> int:
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise InvalidName(f"invalid version {version!r}: expected a positive integer") from None
    if isinstance(version, bool) or number < 1 or number > 99_999_999 or str(version).strip() != str(version):
        raise InvalidName(f"invalid version {version!r}: expected an integer from 1 to 99999999")
    return number


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidName(f"invalid sha256 digest {digest!r}")
    return digest
