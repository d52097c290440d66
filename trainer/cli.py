"""`inferloop train`, `inferloop trainer serve`, `inferloop data generate`."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import traceback
from typing import TypeVar

import msgspec

from inferloop.registry import RegistryError
from inferloop.registry.commandline import (
    UsageError,
    add_registry_options,
    default_actor,
    registry_uri,
    setting,
)
from inferloop.trainer.errors import TrainerError

# `inferloop train --help`'s description: this command's own (the module's docstring names three commands)
TRAIN_HELP = """\
Build one version from a policy: load the data window, train, run both gates on the same holdout,
register, and promote on pass.

Exit codes (a CI step can branch on them):
    0  success: built and registered, gates passed or no gates (reproduce: bit-identical artifact)
    1  a gate failed: the version is registered but not promoted (reproduce: artifact differs);
       also a holdout that cannot judge a gated metric (one class, < 5 rows of a class, ...)
    2  error: bad policy, bad data (also < 20 training or holdout rows, a binary target with one
       class), unreachable registry, crashed training (caught before registering)
"""

EXIT_ERROR = 2


def register_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="run one training build from a policy (or --reproduce a version)",
                       description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--policy", metavar="FILE", help="policy YAML (training:, validation:, ...)")
    what.add_argument("--reproduce", nargs=2, metavar=("NAME", "VERSION"),
                      help="rebuild a registered version from its manifest and compare the artifact digest")
    add_registry_options(p)
    p.add_argument("--data", metavar="DIR", help="read the partitions from DIR instead of the policy's "
                                                 "training.data.source (or the manifest's data URI)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (progress on stderr)")
    p.add_argument("--actor", default=None, help="who runs the build, for the audit log (env INFERLOOP_ACTOR)")
    p.add_argument("--reason", default="", help="why this build runs (recorded with the gate event)")
    p.add_argument("--trigger", default="cli", help="what started it: cli, api, drift, schedule, ...")
    p.add_argument("--job-id", default=None, help=argparse.SUPPRESS)

    t = sub.add_parser("trainer", help="the retraining service")
    tsub = t.add_subparsers(dest="trainer_command", required=True, metavar="VERB")
    s = tsub.add_parser("serve", help="accept retrain requests over HTTP and run scheduled builds")
    add_registry_options(s)
    s.add_argument("--policies", metavar="DIR", help="directory of policy YAML files (env INFERLOOP_POLICIES, "
                                                     "default ./policies)")
    s.add_argument("--host", default=None, help="bind address (env INFERLOOP_TRAINER_HOST, default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port (env INFERLOOP_TRAINER_PORT, default 8100)")
    s.add_argument("--state-dir", default=None, help="where jobs are persisted (env INFERLOOP_TRAINER_STATE, "
                                                     "default .inferloop/trainer)")
    s.add_argument("--job-timeout", type=float, default=None,
                   help="seconds before a job is killed (env INFERLOOP_JOB_TIMEOUT, default 3600)")
    s.add_argument("--max-parallel", type=int, default=None,
                   help="jobs running at once, over all models (env INFERLOOP_TRAINER_PARALLEL, default 1)")
    s.add_argument("--trigger-interval", type=float, default=None,
                   help="seconds between jobs that drift/shadow triggers may start per model (env "
                        "INFERLOOP_TRIGGER_INTERVAL, default 600; 0: no limit)")

    d = sub.add_parser("data", help="synthetic day-partitioned datasets")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="VERB")
    g = dsub.add_parser("generate", help="write day partitions (Parquet) with a known ground truth and drift")
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--kind", choices=["regression", "classification"], default="regression")
    g.add_argument("--days", type=int, default=30)
    g.add_argument("--rows-per-day", type=int, default=1000)
    g.add_argument("--drift-from", type=int, default=None, metavar="DAY",
                   help="first shifted day, 1-based (default: no drift)")
    g.add_argument("--covariate-shift", type=float, default=1.0, help="strength of the input shift (0: off)")
    g.add_argument("--concept-shift", type=float, default=1.0, help="strength of the target shift (0: off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1), help="first day (ISO date)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "trainer":
            return _serve(args)
        return _generate(args)
    except TrainerError as exc:
        if os.environ.get("INFERLOOP_DEBUG") and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)  # the user's own error, in full
        print(f"inferloop: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (RegistryError, UsageError, KeyboardInterrupt):
        raise  # inferloop.cli prints these as one line
    except Exception as exc:  # noqa: BLE001 - a CI step gets one line and exit 2, never a traceback
        if os.environ.get("INFERLOOP_DEBUG"):
            traceback.print_exc()
        print(f"inferloop: error: internal error: {type(exc).__name__}: {exc} "
              "(set INFERLOOP_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _train(args: argparse.Namespace) -> int:
    from inferloop.policy import load_policy
    from inferloop.trainer.launcher import launch
    from inferloop.trainer.pipeline import plan, plan_reproduce
    from inferloop.trainer.report import print_summary

    uri = registry_uri(args)
    if args.reproduce:
        name, version = args.reproduce
        request = plan_reproduce(name, version, uri, s3_endpoint=args.s3_endpoint, data=args.data)
    else:
        policy = load_policy(args.policy)
        request = plan(policy, uri, s3_endpoint=args.s3_endpoint, data=args.data,
                       actor=setting(args.actor, "INFERLOOP_ACTOR", default_actor()), reason=args.reason,
                       trigger=args.trigger, job_id=args.job_id, policy_path=args.policy)
    summary = launch(request)
    if args.json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
    else:
        print_summary(summary)
    sys.stdout.flush()
    return summary.exit_code


_N = TypeVar("_N", int, float)


def _number(value: str | float, kind: type[_N], what: str, minimum: float) -> _N:
    # value: a parsed flag (int/float), an environment string, or the numeric default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number, got {value!r}") from None
    if number < minimum:
        raise UsageError(f"{what} must be at least {minimum:g}, got {number}")
    return number


def _serve(args: argparse.Namespace) -> int:
    from inferloop.trainer.app import serve
    from inferloop.trainer.service import ServiceSettings

    settings = ServiceSettings(
        registry=registry_uri(args),
        s3_endpoint=args.s3_endpoint,
        policies=setting(args.policies, "INFERLOOP_POLICIES", "policies"),
        host=setting(args.host, "INFERLOOP_TRAINER_HOST", "127.0.0.1"),
        port=_number(setting(args.port, "INFERLOOP_TRAINER_PORT", 8100), int, "port", 0),
        state_dir=setting(args.state_dir, "INFERLOOP_TRAINER_STATE", ".inferloop/trainer"),
        job_timeout_s=_number(setting(args.job_timeout, "INFERLOOP_JOB_TIMEOUT", 3600.0), float, "job timeout", 1),
        max_parallel=_number(setting(args.max_parallel, "INFERLOOP_TRAINER_PARALLEL", 1), int, "max parallel", 1),
        trigger_interval_s=_number(setting(args.trigger_interval, "INFERLOOP_TRIGGER_INTERVAL", 600.0), float,
                                   "trigger interval", 0),
        token=os.environ.get("INFERLOOP_TRAINER_TOKEN") or None,
    )
    serve(settings)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from inferloop.trainer.synthetic import generate

    try:
        paths = generate(args.out, kind=args.kind, days=args.days, rows_per_day=args.rows_per_day, seed=args.seed,
                         start=args.start, drift_from=args.drift_from, covariate_shift=args.covariate_shift,
                         concept_shift=args.concept_shift)
    except ValueError as exc:
        raise TrainerError(str(exc)) from None
    drift = f", drift from day {args.drift_from} ({paths[args.drift_from - 1].stem})" \
        if args.drift_from and args.drift_from <= len(paths) else ""
    print(f"wrote {len(paths)} partitions × {args.rows_per_day} rows ({args.kind}) to {args.out}: "
          f"{paths[0].stem} … {paths[-1].stem}{drift}")
    return 0
