"""The package layering, read from the source (not from what a test run happened to import):

    inferloop (the command: dispatch only) ─┐   inferloop.demo (the whole loop, for show)
          │ (by module name, lazily)        │
          ▼                                 ▼
    inferloop.gateway        inferloop.trainer        (never each other; the gateway calls the trainer over HTTP)
          └──────────┬──────────────┘
                     ▼
              inferloop.policy                         (the YAML schema of a model's loop)
                     ▼
             inferloop.registry                        (imports nothing of ours)

Nothing imports `inferloop.cli` or `inferloop.demo`; no package (or module) imports form a cycle;
the old top-level names (`registry`, `gateway`, `trainer`) are imported nowhere.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the folder that holds it (pyproject's package-dir)
FOLDERS = {"inferloop": ROOT / "inferloop", "inferloop.registry": ROOT / "registry",
           "inferloop.gateway": ROOT / "gateway", "inferloop.trainer": ROOT / "trainer"}
LAYERS = {  # layer -> the layers of ours it may import (besides itself)
    "inferloop": set(),  # the namespace's own __init__
    "inferloop.registry": set(),
    "inferloop.policy": {"inferloop.registry"},
    "inferloop.gateway": {"inferloop.registry", "inferloop.policy"},
    "inferloop.trainer": {"inferloop.registry", "inferloop.policy"},
    "inferloop.cli": {"inferloop.registry"},
    "inferloop.demo": {"inferloop.registry", "inferloop.policy", "inferloop.trainer", "inferloop.gateway"},
}
OLD_NAMES = {"registry", "gateway", "trainer"}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            name = ".".join([package, *rel]).removesuffix(".__init__")
            found[name] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(name: str, path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, only for type checking) for every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, node.lineno in typing_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno, node.lineno in typing_only
            for alias in node.names:  # `from pkg import module`
                yield f"{target}.{alias.name}", node.lineno, node.lineno in typing_only


def layer_of(module: str) -> str | None:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or (layer != "inferloop" and module.startswith(layer + ".")):
            return layer
    return None


ALL = modules()


def test_the_packages_are_where_pyproject_maps_them() -> None:
    assert "inferloop.registry.core" in ALL and "inferloop.gateway.serving.dataplane" in ALL
    assert "inferloop.policy" in ALL and "inferloop.trainer.runner" in ALL


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_module_imports_only_the_layers_below_it(name: str) -> None:
    layer = layer_of(name)
    assert layer is not None, f"{name} belongs to no layer: add it to LAYERS"
    allowed = LAYERS[layer] | {layer}
    wrong = []
    for target, line, _typing in imports(name, ALL[name]):
        head = target.split(".")[0]
        if head in OLD_NAMES:
            wrong.append(f"line {line}: {target} (an old top-level name)")
        if head != "inferloop" or target == "inferloop":
            continue
        if target not in ALL and target.rpartition(".")[0] in ALL:
            target = target.rpartition(".")[0]  # `from pkg import name` where name is not a module
        if target in ("inferloop.cli", "inferloop.demo") and layer not in ("inferloop.cli", "inferloop.demo"):
            wrong.append(f"line {line}: {target} (nothing imports the command line or the demo)")
            continue
        if layer_of(target) not in allowed:
            wrong.append(f"line {line}: {target}")
    assert not wrong, f"{name} imports above its layer: {wrong}"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in ALL}
    for name, path in ALL.items():
        for target, _line, typing_only in imports(name, path):
            if typing_only:
                continue  # annotations only: no import at run time
            while target and target not in ALL:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package's __init__ re-exporting its own modules is not a cycle
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_tests_loadtests_and_scripts_use_the_namespace_too() -> None:
    stale = []
    for folder in ("tests", "loadtests", "scripts", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            if ".venvs" in path.parts:
                continue
            for target, line, _ in imports(f"{folder}.{path.stem}", path):
                if target.split(".")[0] in OLD_NAMES:
                    stale.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not stale, stale
