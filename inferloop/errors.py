"""Errors the command line turns into one-line messages (kept apart from `inferloop.cli`, so the
class is the same object whether the CLI runs as `inferloop` or as `python -m inferloop.cli`)."""

from __future__ import annotations


class UsageError(Exception):
    """A user mistake worth one line (bad flag value, unreadable file); exit code 2."""
