"""`inferloop registry list|show|promote|rollback|history|verify`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import msgspec

from inferloop.registry import Registry
from inferloop.registry.commandline import add_registry_options, default_actor, registry_uri
from inferloop.registry.manifest import Event


def open_registry(args: argparse.Namespace) -> Registry:
    # no verb here can start a registry (promote and rollback need its versions): a missing one is an
    # error ("no registry at URI", exit 2), never an empty directory made by looking
    return Registry.open(registry_uri(args), s3_endpoint=getattr(args, "s3_endpoint", None), create=False)


def register_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reg = sub.add_parser("registry", help="inspect and move model versions")
    rsub = reg.add_subparsers(dest="registry_command", required=True, metavar="VERB")

    def verb(name: str, help_: str) -> argparse.ArgumentParser:
        p = rsub.add_parser(name, help=help_)
        add_registry_options(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = verb("list", "models, or the versions of one model")
    p.add_argument("name", nargs="?")
    p.add_argument("--after", default=None, help="page: start after this model name / version")
    p.add_argument("--limit", type=int, default=100)
    p = verb("show", "a model's stages, or one version's manifest")
    p.add_argument("name")
    p.add_argument("version", nargs="?")
    p = verb("promote", "move a stage pointer to a version")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--stage", required=True)
    p.add_argument("--reason", default="")
    p.add_argument("--expect", default=None, help="only if the pointer is at this version ('none': absent)")
    p = verb("rollback", "re-promote the previous version (or --to VERSION)")
    p.add_argument("name")
    p.add_argument("--stage", required=True)
    p.add_argument("--to", default=None)
    p.add_argument("--reason", default="")
    p = verb("history", "the audit log of a model")
    p.add_argument("name")
    p.add_argument("--after", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    p = verb("verify", "check the event hash chain, every blob digest and every pointer")
    p.add_argument("name")


def _print_json(obj: Any) -> None:
    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def run(args: argparse.Namespace) -> int:
    with open_registry(args) as reg:
        cmd = args.registry_command
        if cmd == "list":
            if args.name:
                versions = reg.list_versions(args.name, int(args.after or 0), args.limit)
                if not versions and not args.after:
                    reg.get_manifest(args.name, 1)  # raises a clear NotFound for an unknown model
                stages = reg.stages(args.name)
                where = {p.version: s for s, p in stages.items() if p is not None}
                # --json carries what the table shows (the full digest and metrics, unrounded)
                listed = [(v, where.get(v), reg.get_manifest(args.name, v)) for v in versions]
                if args.json:
                    _print_json([{"version": v, "stage": stage, "created_at": m.created_at,
                                  "digest": m.artifact.digest, "metrics": m.metrics} for v, stage, m in listed])
                else:
                    _table([[v, stage or "", m.created_at, m.artifact.digest[:12],
                             " ".join(f"{k}={val:.4g}" for k, val in sorted(m.metrics.items()))]
                            for v, stage, m in listed], ["VERSION", "STAGE", "CREATED", "DIGEST", "METRICS"])
            else:
                stage_names = ("staging", "shadow", "production")
                rows = []
                for name in reg.list_models(args.after or "", args.limit):
                    st = reg.stages(name)
                    rows.append((name, reg.latest_version(name),
                                 [ptr.version if (ptr := st[s]) else None for s in stage_names]))
                if args.json:  # the table's columns, one object per model
                    _print_json([{"name": name, "latest": latest, **dict(zip(stage_names, versions, strict=True))}
                                 for name, latest, versions in rows])
                else:
                    _table([[name, latest, *["-" if v is None else v for v in versions]]
                            for name, latest, versions in rows], ["MODEL", "LATEST", "STAGING", "SHADOW", "PRODUCTION"])
        elif cmd == "show":
            if args.version:
                m = reg.get_manifest(args.name, args.version)
                if args.json:
                    _print_json(m)
                else:
                    d = msgspec.to_builtins(m)
                    d.pop("reference", None)
                    d.pop("warmup", None)
                    print(json.dumps(d, indent=2))
            else:
                stages = reg.stages(args.name)
                latest = reg.latest_version(args.name)
                if latest == 0:
                    reg.get_manifest(args.name, 1)
                if args.json:
                    _print_json({"name": args.name, "latest": latest, "stages": stages})
                else:
                    print(f"{args.name}: {latest} version(s)")
                    _table([[s, p.version, p.updated_at, p.actor, p.reason] if p else [s, "-", "", "", ""]
                            for s, p in stages.items()], ["STAGE", "VERSION", "UPDATED", "ACTOR", "REASON"])
        elif cmd == "promote":
            kwargs: dict[str, Any] = {}
            if args.expect is not None:
                kwargs["expected_version"] = None if args.expect == "none" else int(args.expect)
            p = reg.promote(args.name, args.version, args.stage, actor=default_actor(), reason=args.reason, **kwargs)
            _print_json(p) if args.json else print(f"{args.name} {args.stage} -> v{p.version}"
                                                    f" (was {p.previous_version or '-'})")
        elif cmd == "rollback":
            p = reg.rollback(args.name, args.stage, to_version=args.to, actor=default_actor(), reason=args.reason)
            _print_json(p) if args.json else print(f"{args.name} {args.stage} rolled back to v{p.version}"
                                                    f" (was {p.previous_version})")
        elif cmd == "history":
            events: list[Event] = reg.history(args.name, after=args.after, limit=args.limit)
            if not events and not args.after:
                reg.get_manifest(args.name, 1)
            if args.json:
                _print_json(events)
            else:
                _table([[e.seq, e.time, e.kind, e.stage or "", e.version or "", e.from_version or "", e.actor,
                         e.reason] for e in events],
                       ["SEQ", "TIME", "EVENT", "STAGE", "VERSION", "FROM", "ACTOR", "REASON"])
        elif cmd == "verify":
            problems = reg.verify(args.name)
            if args.json:
                _print_json({"ok": not problems, "problems": problems})
            else:
                for line in problems:
                    print(f"PROBLEM: {line}")
                print(f"{args.name}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
            return 0 if not problems else 1
    return 0
