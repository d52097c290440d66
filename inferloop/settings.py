"""Settings resolution shared by every command: flag, then INFERLOOP_* environment, then default."""

from __future__ import annotations

import os
from typing import Any


def setting(flag_value: Any, env: str, default: Any = None) -> Any:
    if flag_value is not None:
        return flag_value
    value = os.environ.get(env)
    if value is not None and value != "":
        return value
    return default
