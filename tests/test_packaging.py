"""One import namespace: `pip install inferloop` adds the top-level name `inferloop` and nothing
else, so it lives beside the PyPI `trainer` distribution, and no folder in the working directory
(a user's `registry/`, `gateway/`, `trainer/`, even `inferloop/`) can shadow the modules that
training jobs run. Built and installed for real: a wheel from this checkout, a new virtual
environment, the PyPI `trainer` wheel beside it, and the demo closing the loop from there."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import free_port
from .fault_harness import ROOT, TrainerProcess
from .trainer_support import make_data, policy_dict, wait_for, write_policy

OLD_NAMES = ("registry", "gateway", "trainer")


def _shadowing_folders(where: Path) -> Path:
    """Folders named like our packages whose import fails loudly, as a user's own folders would."""
    for name in (*OLD_NAMES, "inferloop"):
        (where / name).mkdir(parents=True)
        (where / name / "__init__.py").write_text(f"raise ImportError('the working directory shadowed {name}')\n")
    return where


def test_no_old_top_level_name_is_imported_by_the_package() -> None:
    """Observed: importing every command's module from the repository root (cwd first on sys.path, as
    under `python -m`) loads no module named `registry`, `gateway` or `trainer`: no file is loaded twice
    under two names."""
    code = ("import sys, inferloop.cli, inferloop.registry.cli, inferloop.gateway.cli, inferloop.gateway.app, "
            "inferloop.trainer.cli, inferloop.trainer.worker, inferloop.demo\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'registry', 'gateway', 'trainer'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert not [m for m in sys.modules if m.split(".")[0] in OLD_NAMES]  # nor in this test process


def test_a_retrain_job_succeeds_from_a_directory_that_holds_folders_named_like_our_packages(tmp_path: Path) -> None:
    """Observed: `inferloop trainer serve` started (console script) in a directory holding `registry/`,
    `gateway/`, `trainer/` and `inferloop/` folders that raise on import; a drift-triggered retrain
    request runs its job (`python -P -m inferloop.cli train`) to `succeeded` and registers v1."""
    work = _shadowing_folders(tmp_path / "project")
    data = make_data(tmp_path)
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(policies / "rev.yaml", policy_dict(data))
    console = Path(sys.executable).with_name("inferloop")
    command = (str(console),) if console.exists() else (sys.executable, "-P", "-m", "inferloop.cli")
    trainer = TrainerProcess(tmp_path, free_port(), registry=f"file://{tmp_path / 'reg'}", policies=policies,
                             state=tmp_path / "state", command=command, cwd=work)
    try:
        trainer.wait_up()
        r = trainer.client.post("/v1/retrain", json={"model": "rev", "trigger": "drift", "reason": "psi 0.3",
                                                     "idempotency_key": "rev:1:w1"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        def finished() -> dict | None:
            job = trainer.client.get(f"/v1/jobs/{job_id}").json()
            return job if job["state"] in {"succeeded", "gate_failed", "failed"} else None

        job = wait_for(finished, 120, "the job did not finish")
        assert job["state"] == "succeeded", job
        assert job["version"] == 1
        assert "shadowed" not in trainer.output()
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("inferloop-*.whl")
    return path


def test_the_wheel_installs_only_the_inferloop_name(wheel: Path) -> None:
    """Observed: every file in the wheel is under `inferloop/` or its dist-info; every package folder
    of the checkout is in it (pyproject's package list is complete)."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"inferloop"}, tops
    for folder, package in (("registry", "registry"), ("gateway", "gateway"), ("trainer", "trainer")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT / folder).as_posix()
            assert f"inferloop/{package}/{rel}" in names, f"{init} is not packaged"
    for init in (ROOT / "inferloop").rglob("__init__.py"):
        assert f"inferloop/{init.relative_to(ROOT / 'inferloop').as_posix()}" in names


def test_the_wheel_beside_pypi_trainer_closes_the_loop(wheel: Path, tmp_path: Path) -> None:
    """Observed: a new virtual environment (dependencies read from this one's site-packages, `inferloop`
    only from the wheel) with the PyPI `trainer` distribution installed beside it: both top-level names resolve to
    their own files, and `inferloop demo`, run from a directory with shadowing folders, closes the loop."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # dependencies (torch, litestar, ...) from this environment, after the venv's own packages; a path
    # line runs none of this environment's .pth files, so its editable `inferloop` stays out of sight
    parent = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    Path(site, "zz-parent-environment.pth").write_text("\n".join(sorted(parent)) + "\n")
    for args in (["--no-deps", str(wheel)], ["--no-deps", "trainer==0.0.36"]):
        done = subprocess.run([str(py), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
    work = _shadowing_folders(tmp_path / "project")
    where = subprocess.run(
        [str(py), "-P", "-c", "import importlib.util as u, inferloop.registry, inferloop.gateway.app, "
         "inferloop.trainer.cli; print(inferloop.registry.__file__); print(u.find_spec('trainer').origin)"],
        cwd=work, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    ours, theirs = where.stdout.split()
    assert ours.startswith(site) and theirs.startswith(site), (ours, theirs, site)
    assert Path(theirs) != Path(ours) and "inferloop" not in theirs
    demo = subprocess.run([str(venv / "bin" / "inferloop"), "demo", "--workdir", str(tmp_path / "demo"),
                           "--rows-per-day", "600"], cwd=work, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "shadowed" not in demo.stdout + demo.stderr
