"""The `inferloop` command. Each component registers its verbs; errors become one-line messages."""

from __future__ import annotations

import argparse
import sys

from registry import RegistryError

from . import demo, registry_cli

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferloop", description="closed-loop ML delivery")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registry_cli.register_parser(sub)
    demo.register_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "registry":
            return registry_cli.run(args)
        if args.command == "demo":
            return demo.run(args)
        parser.error(f"unknown command {args.command}")
    except RegistryError as exc:
        print(f"inferloop: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
