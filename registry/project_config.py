"""The project config: `.inferloop/config.json` in the working directory, `{"registry": URI}`.

Every command that opens a registry resolves its URI the same way: `--registry`, then
`INFERLOOP_REGISTRY`, then this file, then the embedded default (`DEFAULT_REGISTRY_URI`). The
registry and trainer command lines do it in `commandline.registry_uri`, the gateway in
`gateway/settings.py`; both read the file through `configured_registry` here, so there is one
reading of it. `inferloop demo` writes it, so the commands printed after the demo (and shown in the
README) work on the demo's registry without flags; deleting the file goes back to the default.

It lives beside the default registry (`.inferloop/`), relative to the working directory, as that
default is: a project's commands run from its root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec

from .store import DEFAULT_REGISTRY_URI

CONFIG_PATH = Path(".inferloop") / "config.json"
WRITTEN_BY_DEMO = "inferloop demo"


class ProjectConfig(msgspec.Struct, frozen=True, omit_defaults=True):
    registry: str | None = None
    """Registry URI used when neither --registry nor INFERLOOP_REGISTRY is given."""
    written_by: str | None = None
    """Who wrote the file: `inferloop demo` rewrites only a file it wrote itself."""


class ProjectConfigError(ValueError):
    """The file exists but cannot be used; the message names it."""


def read_config(root: Path | None = None) -> ProjectConfig | None:
    """The project config under `root` (default: the working directory), or None when there is none."""
    path = (root or Path.cwd()) / CONFIG_PATH
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProjectConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return msgspec.json.decode(raw, type=ProjectConfig)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ProjectConfigError(f"{path} is not a valid project config ({exc}); fix or delete it") from None


def configured_registry(root: Path | None = None) -> str | None:
    """The registry URI the project config names, or None (no file, or no `registry` in it)."""
    config = read_config(root)
    return config.registry if config is not None and config.registry else None


def resolve_registry(flag: str | None = None, root: Path | None = None) -> str:
    """The registry URI a command uses: `flag` (its --registry), then INFERLOOP_REGISTRY, then the
    project config, then the default. Scripts that register models (examples/models/*/model.py) call
    it too, so they write where `inferloop serve` and `inferloop registry` will look."""
    if flag is not None:
        return flag  # as given, even empty: opening it says what is wrong, never a silent fallback
    return os.environ.get("INFERLOOP_REGISTRY") or configured_registry(root) or DEFAULT_REGISTRY_URI


def write_demo_config(registry: str, root: Path | None = None) -> Path | None:
    """Point the project config at the demo's registry, unless the file exists and was not written by
    the demo (a user's own config is never overwritten). Returns the path written, else None."""
    path = (root or Path.cwd()) / CONFIG_PATH
    try:
        existing = read_config(root)
    except ProjectConfigError:
        return None
    if existing is not None and existing.written_by != WRITTEN_BY_DEMO:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(msgspec.to_builtins(ProjectConfig(registry=registry, written_by=WRITTEN_BY_DEMO)), indent=2)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body + "\n")
    tmp.replace(path)
    return path
