"""Trainer errors: one line for the user, no traceback (the CLI maps them to exit code 2).

    TrainerError
    ├── DataError    partitions missing, empty, unreadable, wrong columns, NaN/inf values
    └── LaunchError  a training process that crashed, timed out or could not be started
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base of every error the trainer reports to its user."""


class DataError(TrainerError):
    pass


class LaunchError(TrainerError):
    pass
