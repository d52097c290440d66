"""The `inferloop` command. Each component owns its verbs in a module with `register_parser(sub)`
and `run(args) -> int`; this file only dispatches and turns errors into one-line messages."""

from __future__ import annotations

import argparse
import importlib
import sys

from inferloop.registry import RegistryError
from inferloop.registry.commandline import UsageError

EXIT_ERROR = 2
__all__ = ["UsageError", "build_parser", "main"]

# command -> module that defines register_parser(sub) and run(args); imported lazily for speed.
COMMANDS = {
    "registry": "inferloop.registry.cli",
    "demo": "inferloop.demo",
    "train": "inferloop.trainer.cli",
    "trainer": "inferloop.trainer.cli",
    "data": "inferloop.trainer.cli",
    "serve": "inferloop.gateway.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferloop", description="closed-loop ML delivery")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seen: set[str] = set()
    for module_name in COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # component not built yet
            raise
        module.register_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args) or 0)
    except (RegistryError, UsageError) as exc:
        print(f"inferloop: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
