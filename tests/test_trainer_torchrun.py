"""`launcher: torchrun`: the same training on 2 processes (DDP over gloo on CPU); rank 0 registers and
the manifest records the world size."""

from __future__ import annotations

import json
from pathlib import Path

from inferloop.registry import Registry

from .trainer_support import make_data, policy_dict, run_cli, write_policy


def test_torchrun_two_processes_register_one_version_with_world_size_2(tmp_path: Path, capsys) -> None:
    data = make_data(tmp_path)
    uri = f"file://{tmp_path / 'reg'}"
    policy = write_policy(tmp_path / "ddp.yaml", policy_dict(data, launcher="torchrun", nproc=2))
    code, out, err = run_cli(capsys, "train", "--policy", str(policy), "--registry", uri, "--json")
    assert code == 0, err
    summary = json.loads(out)  # worker output went to stderr: stdout is exactly the summary
    assert summary["world_size"] == 2 and summary["version"] == 1 and summary["verdict"] == "passed"
    assert "2 process(es) on cpu" in err and "epoch 3/3" in err
    with Registry.open(uri) as reg:
        manifest = reg.get_manifest("rev", 1)
        assert reg.latest_version("rev") == 1  # only rank 0 registered
        assert reg.get_pointer("rev", "staging").version == 1
    assert manifest.lineage.world_size == 2
    assert manifest.artifact.digest == summary["digest"]
    # the data-parallel run takes the same global batches and averages the same gradient as one process
    single = write_policy(tmp_path / "single.yaml", policy_dict(data))
    code, out, err = run_cli(capsys, "train", "--policy", str(single), "--registry", uri, "--json")
    assert code == 0, err
    local = json.loads(out)
    assert local["version"] == 2  # world size is part of the identity: another version
    # equal up to the order of floating-point sums (measured: ~1e-7 relative)
    assert abs(local["metrics"]["rmse"] - summary["metrics"]["rmse"]) < 1e-4 * local["metrics"]["rmse"]
