"""What every component's command line shares, and nothing else: settings resolution (flag, then
`INFERLOOP_*` environment, then default), the registry URI (flag, environment, the project config
`.inferloop/config.json`, default) and actor rules, and `UsageError`.

It sits in the registry package because the registry is the one layer every command stands on;
it imports nothing above the registry. The `inferloop` command (`inferloop.cli`) only dispatches
to each component's own module (`inferloop.registry.cli`, `inferloop.trainer.cli`,
`inferloop.gateway.cli`) and turns `UsageError` and registry errors into one-line messages.
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from .project_config import CONFIG_PATH, ProjectConfigError, resolve_registry
from .store import DEFAULT_REGISTRY_URI

REGISTRY_HELP = f"registry URI (env INFERLOOP_REGISTRY, then {CONFIG_PATH}, default {DEFAULT_REGISTRY_URI})"


class UsageError(Exception):
    """A user mistake worth one line (bad flag value, unreadable file); exit code 2."""


def setting(flag_value: Any, env: str, default: Any = None) -> Any:
    if flag_value is not None:
        return flag_value
    value = os.environ.get(env)
    if value is not None and value != "":
        return value
    return default


def add_registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", help=REGISTRY_HELP)
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (env AWS_ENDPOINT_URL)")


def registry_uri(args: argparse.Namespace) -> str:
    """The registry URI from --registry, then INFERLOOP_REGISTRY, then the project config
    (`.inferloop/config.json`, which `inferloop demo` writes), then the embedded default."""
    try:
        return resolve_registry(args.registry)
    except ProjectConfigError as exc:
        raise UsageError(str(exc)) from None


def default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
