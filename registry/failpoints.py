"""Crash points for fault-injection tests: `INFERLOOP_FAILPOINT=<name>` kills the process there with
SIGKILL, exactly as an OOM-kill or power loss would; `<name>:stop` stops it there with SIGSTOP
instead (a writer stalled mid-operation, which the test resumes with SIGCONT). One environment
lookup when unset."""

from __future__ import annotations

import os
import signal

_ACTIVE, _, _ACTION = os.environ.get("INFERLOOP_FAILPOINT", "").partition(":")


def failpoint(name: str) -> None:
    if _ACTIVE and _ACTIVE == name:
        os.kill(os.getpid(), signal.SIGSTOP if _ACTION == "stop" else signal.SIGKILL)
