"""Crash points for fault-injection tests: `INFERLOOP_FAILPOINT=<name>` kills the process there with
SIGKILL, exactly as an OOM-kill or power loss would. One environment lookup when unset."""

from __future__ import annotations

import os
import signal

_ACTIVE = os.environ.get("INFERLOOP_FAILPOINT", "")


def failpoint(name: str) -> None:
    if _ACTIVE and _ACTIVE == name:
        os.kill(os.getpid(), signal.SIGKILL)
