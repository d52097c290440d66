"""The user's training function (`training.entrypoint: "package.module:function"`): find it, fingerprint
its code for the lineage, and call it so that whatever goes wrong is one line naming the cause.

Import rule: the entrypoint is imported from an installed package, or from the policy's project: the
nearest directory at or above the policy file holding a `pyproject.toml`, `setup.py`, `setup.cfg` or
`.git` (else the policy's own directory). That directory is appended to `sys.path`, after the
installed packages, so a user's folder can never shadow a module of ours or of a dependency.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from inferloop.registry.lineage import capture_code, file_digest
from inferloop.registry.manifest import EntrypointLineage
from inferloop.trainer.errors import TrainerError

BUILTIN = "inferloop.trainer.builtin:mlp"
_PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


class EntrypointError(TrainerError):
    """The entrypoint cannot be imported, has the wrong signature, raised, or returned no model.
    `__cause__` holds the user's exception, printed in full with INFERLOOP_DEBUG=1."""


def project_root(policy_path: str | os.PathLike[str]) -> str:
    start = Path(policy_path).absolute().parent
    for directory in (start, *start.parents):
        if any((directory / marker).exists() for marker in _PROJECT_MARKERS):
            return str(directory)
    return str(start)


def load(entrypoint: str, root: str | None) -> Callable[..., Any]:
    """The function named by `entrypoint`, checked to take exactly one argument (the context)."""
    module_name, _, attr = entrypoint.partition(":")
    if root is not None and root not in sys.path:
        sys.path.append(root)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name) and (
                exc.name == module_name or module_name.startswith(exc.name + ".")):
            where = f"installed packages or {root}" if root else "installed packages"
            raise EntrypointError(f"training.entrypoint {entrypoint!r}: no module {exc.name!r} in {where}") from exc
        raise _raised(f"importing training.entrypoint {entrypoint!r}", exc) from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed while being imported
        raise _raised(f"importing training.entrypoint {entrypoint!r}", exc) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise EntrypointError(f"training.entrypoint {entrypoint!r}: {module_name} "
                                  f"({getattr(module, '__file__', '?')}) has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise EntrypointError(f"training.entrypoint {entrypoint!r} is a {type(target).__name__}, not a function")
    try:
        inspect.signature(target).bind(object())
    except TypeError:
        raise EntrypointError(f"training.entrypoint {entrypoint!r} must take one argument, the training context "
                              f"(def {attr.split('.')[-1]}(ctx): ...); its signature is "
                              f"{_signature(target)}") from None
    except ValueError:
        pass  # no signature to inspect (a builtin or C callable): let the call tell
    return target  # type: ignore[no-any-return]


def _signature(fn: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "unknown"


def call(fn: Callable[..., Any], context: Any, entrypoint: str) -> Any:
    try:
        return fn(context)
    except TrainerError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: one line with where it happened
        raise _raised(f"training.entrypoint {entrypoint!r}", exc) from exc


def _raised(what: str, exc: BaseException) -> EntrypointError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = _user_frame(exc.__traceback__)
    return EntrypointError(f"{what} raised {type(exc).__name__}{': ' + first if first else ''}"
                           f"{f' (at {where})' if where else ''}")


def _user_frame(tb: TracebackType | None) -> str | None:
    """file:line of the deepest frame in the user's code: not ours, not the standard library's and not
    an installed package's (torch's own frames say nothing about which line of theirs was wrong)."""
    ours = str(Path(__file__).resolve().parents[1])
    stdlib = os.path.dirname(os.__file__)
    frames = traceback.extract_tb(tb)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if path.startswith((ours, stdlib)) or "site-packages" in path or frame.filename.startswith("<"):
            continue
        return f"{frame.filename}:{frame.lineno}"
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def lineage(entrypoint: str, fn: Callable[..., Any], root: str | None) -> EntrypointLineage:
    """The entrypoint's code fingerprint: its module file's digest, its package's, and the repository state."""
    module = sys.modules[fn.__module__] if fn.__module__ in sys.modules else inspect.getmodule(fn)
    path = getattr(module, "__file__", None)
    if path is None:
        raise EntrypointError(f"training.entrypoint {entrypoint!r}: its module has no source file to record")
    path = os.path.abspath(path)
    top = sys.modules.get(entrypoint.split(":")[0].split(".")[0])
    top_path = getattr(top, "__file__", None) or path
    package_dir = Path(top_path).parent if Path(top_path).name == "__init__.py" else None
    return EntrypointLineage(entrypoint=entrypoint, module_file=path, module_digest=file_digest(path),
                             package_digest=tree_digest(package_dir) if package_dir else file_digest(path),
                             code=capture_code(cwd=str(Path(path).parent)), root=root)


def tree_digest(directory: Path) -> str:
    """sha256 over (relative path, bytes) of every .py file under `directory`, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts):
        h.update(str(path.relative_to(directory)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()
