"""The three examples in examples/models/<name>/ as a user runs them: `data.py` writes the day
partitions, `inferloop train --policy examples/models/<name>/policy.yaml` runs the example's own
entrypoint (imported as `examples.models.<name>.train` from the repository root, the policy's project),
and the gates pass and promote. The same build again gives the same bytes, so the same version."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .trainer_support import run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["tabular_embeddings", "cnn1d", "sklearn_gbm_onnx"]


def _forget_examples() -> None:
    # the CLI runs in this process: each test imports the example's package afresh
    for name in [n for n in sys.modules if n == "examples" or n.startswith("examples.")]:
        del sys.modules[name]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory, as if the user had just cloned the repository elsewhere and cd'd there:
    the policy's relative data source resolves in it."""
    monkeypatch.chdir(tmp_path)
    had_root = str(ROOT) in sys.path
    _forget_examples()
    yield tmp_path
    _forget_examples()
    if not had_root and str(ROOT) in sys.path:
        sys.path.remove(str(ROOT))  # appended by the trainer's import rule


def _train(capsys: pytest.CaptureFixture[str], policy: Path, uri: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "train", "--policy", str(policy), "--registry", uri, "--json")
    assert code == 0, err
    summary: dict[str, Any] = json.loads(out)
    return summary


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains_passes_its_gates_and_is_promoted(name: str, workdir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "examples" / "models" / name
    made = subprocess.run([sys.executable, "-P", str(example / "data.py")], cwd=workdir, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    assert len(list((workdir / ".inferloop" / "examples" / name).glob("*.parquet"))) == 6

    uri = f"file://{workdir / 'reg'}"
    first = _train(capsys, example / "policy.yaml", uri)
    assert first["verdict"] == "passed" and first["promoted"] == "production", first["validation"]
    assert first["version"] == 1 and first["created"] is True
    assert first["entrypoint"] == f"examples.models.{name}.train:fit" and first["training_metrics"]

    # deterministic on the CPU: the same code, data and seed give the same bytes, hence the same version
    _forget_examples()
    again = _train(capsys, example / "policy.yaml", uri)
    assert again["version"] == 1 and again["created"] is False and again["digest"] == first["digest"]
    assert again["verdict"] == "passed"
