"""Which code a benchmarked gateway runs: the working tree, or any commit checked out beside it, so a
change's cost is a ratio measured in one run (`bench_gateway --baseline-ref`, `bench_peers --gateway-ref`).

A commit is checked out with `git worktree add --detach` into a scratch directory and removed again
afterwards. How its code is imported depends on the layout it has:

- before commit 28b9b2a ("One import namespace") the components were top-level packages
  (`registry`, `gateway`, `trainer`, `inferloop`): the checkout itself goes on `PYTHONPATH` and the
  server starts with the checkout as its working directory (`python -m` puts that first on sys.path);
- from it on, pyproject maps folders onto `inferloop.*` (package-dir), which only an install
  follows: a farm of links lays the folders out as installed (`inferloop/registry -> registry`, as
  tests/test_typing.py does), and the farm is both `PYTHONPATH` and working directory.

Either way the project's editable install would still answer any module the checkout lacks (its
finder maps `inferloop.gateway` to this working tree), so `verify` checks, in the environment the
server gets, that every part imports from the checkout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("registry", "gateway", "trainer")


@dataclass(frozen=True)
class Source:
    root: Path  # the tree whose code runs
    cwd: Path  # working directory for `python -m inferloop.cli` (first on sys.path)
    pythonpath: str | None  # None: the project's own environment as it is
    namespaced: bool  # `inferloop.registry` (True) or top-level `registry` (before 28b9b2a)
    label: str  # how results name it: "working tree at abc1234", "commit 9ff7b56"

    @property
    def registry_module(self) -> str:
        return "inferloop.registry" if self.namespaced else "registry"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        if self.pythonpath is None:
            env.pop("PYTHONPATH", None)
        else:
            env["PYTHONPATH"] = self.pythonpath
        return env


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def working_tree() -> Source:
    dirty = _git("status", "--porcelain", "--", *COMPONENTS, "inferloop", "pyproject.toml")
    label = f"working tree at {_git('rev-parse', '--short', 'HEAD')}" + (" + uncommitted changes" if dirty else "")
    return Source(REPO, REPO, None, True, label)


def resolve(ref: str) -> str:
    """The short commit a ref names; ValueError with git's reason if none."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--short", f"{ref}^{{commit}}"], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise ValueError(f"not a commit in {REPO}: {ref!r}")
    return done.stdout.strip()


def _link_farm(tree: Path, farm: Path) -> Path:
    package = farm / "inferloop"
    package.mkdir(parents=True)
    for entry in (tree / "inferloop").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for folder in COMPONENTS:
        if (tree / folder).is_dir():
            (package / folder).symlink_to(tree / folder)
    return farm


@contextlib.contextmanager
def checkout(ref: str, scratch: Path) -> Iterator[Source]:
    """A worktree of `ref` under `scratch`, laid out to import; removed when the block ends."""
    commit = resolve(ref)
    tree = scratch / f"src-{commit}"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), commit], cwd=REPO, check=True,
                   capture_output=True)
    try:
        pyproject = (tree / "pyproject.toml").read_text() if (tree / "pyproject.toml").exists() else ""
        if '"inferloop.gateway"' in pyproject:
            farm = _link_farm(tree, scratch / f"farm-{commit}")
            yield Source(tree, farm, str(farm), True, f"commit {commit}")
        else:
            yield Source(tree, tree, str(tree), False, f"commit {commit}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, capture_output=True)


VERIFY = """
import importlib, sys
for name in sys.argv[1:]:
    print(importlib.import_module(name).__file__)
"""


def verify(source: Source) -> None:
    """RuntimeError unless the CLI, registry and gateway import from `source.root` when started as
    the benchmarks start them (same environment, same working directory)."""
    prefix = "inferloop." if source.namespaced else ""
    modules = ["inferloop.cli", f"{prefix}registry", f"{prefix}gateway"]
    done = subprocess.run([sys.executable, "-c", VERIFY, *modules], cwd=source.cwd, env=source.env(),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{source.label}: cannot import {modules}: {done.stderr.strip()[-500:]}")
    root = source.root.resolve()
    for module, path in zip(modules, done.stdout.split(), strict=True):
        if not Path(path).resolve().is_relative_to(root):
            raise RuntimeError(f"{source.label}: {module} imports from {path}, not from {root}")


REGISTER = """
import importlib, sys
import torch
reg = importlib.import_module(sys.argv[1])
uri, name, shadow, seed = sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
torch.manual_seed(0)
model = reg.MLP(8, 1, [64, 64]).eval()
x = torch.randn(512, 8, generator=torch.Generator().manual_seed(seed))
with reg.Registry.open(uri) as r:
    with r.track(name, actor="bench") as run:
        version = run.register(model, example_inputs=x[:8], reference=x)
    r.promote(name, version, "production", actor="bench")
    if shadow:  # same size, other weights
        torch.manual_seed(1)
        with r.track(name, actor="bench") as run:
            other = run.register(reg.MLP(8, 1, [64, 64]).eval(), example_inputs=x[:8], reference=x)
        r.promote(name, other, "shadow", actor="bench")
"""


def make_registry(source: Source, root: Path, model: str = "bench", shadow: bool = False,
                  reference_seed: int = 1) -> str:
    """A file registry written by `source`'s own registry code (formats change between commits):
    model `model` = MLP 8→64→64→1 from torch seed 0 in production (the weights every benchmark
    serves), and with `shadow` a same-size model from seed 1 as the shadow stage. Returns its URI."""
    uri = f"file://{root}"
    done = subprocess.run([sys.executable, "-c", REGISTER, source.registry_module, uri, model,
                           "1" if shadow else "0", str(reference_seed)],
                          cwd=source.cwd, env=source.env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{source.label}: registering the benchmark model failed: {done.stderr.strip()[-800:]}")
    return uri
