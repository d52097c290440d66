"""The project config (`.inferloop/config.json`): every command that opens a registry reads it after
`--registry` and `INFERLOOP_REGISTRY` and before the default, through one function; the demo writes
it and never overwrites a user's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferloop.gateway.settings import SettingsError, resolve_settings
from inferloop.registry import DEFAULT_REGISTRY_URI, Registry
from inferloop.registry.project_config import CONFIG_PATH, configured_registry, write_demo_config
from tests.helpers import register_tiny
from tests.trainer_support import run_cli


def _config(root: Path, body: object) -> Path:
    path = root / CONFIG_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def test_the_gateway_resolves_flag_then_environment_then_config_then_default(tmp_path: Path) -> None:
    assert resolve_settings({}, {}, root=tmp_path).registry.uri == DEFAULT_REGISTRY_URI
    _config(tmp_path, {"registry": "file:///from/config"})
    assert resolve_settings({}, {}, root=tmp_path).registry.uri == "file:///from/config"
    env = {"INFERLOOP_REGISTRY": "file:///from/env"}
    assert resolve_settings({}, env, root=tmp_path).registry.uri == "file:///from/env"
    assert resolve_settings({"registry": "file:///from/flag"}, env, root=tmp_path).registry.uri == "file:///from/flag"


def test_a_broken_config_is_named(tmp_path: Path) -> None:
    _config(tmp_path, "{not json")
    with pytest.raises(SettingsError, match=r"\.inferloop/config\.json"):
        resolve_settings({}, {}, root=tmp_path)
    _config(tmp_path, {"registry": 3})
    with pytest.raises(SettingsError, match="config.json"):
        resolve_settings({}, {}, root=tmp_path)


def test_registry_commands_use_the_config_of_the_working_directory(tmp_path: Path, capsys, monkeypatch) -> None:
    uri = f"file://{tmp_path / 'elsewhere'}"
    with Registry.open(uri) as reg:
        reg.promote("m", register_tiny(reg, "m", 1), "production")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INFERLOOP_REGISTRY", raising=False)
    code, _, err = run_cli(capsys, "registry", "list")
    assert code == 2 and str(tmp_path / ".inferloop" / "registry") in err  # no config: the default, absent
    _config(tmp_path, {"registry": uri})
    code, out, err = run_cli(capsys, "registry", "list", "--json")
    assert code == 0, err
    assert json.loads(out) == [{"name": "m", "latest": 1, "staging": None, "shadow": None, "production": 1}]
    code, out, _ = run_cli(capsys, "registry", "show", "m")
    assert code == 0 and "production  1" in out
    _config(tmp_path, "[]")
    code, _, err = run_cli(capsys, "registry", "list")
    assert code == 2 and "config.json" in err and "Traceback" not in err


def test_the_demo_rewrites_its_own_config_and_never_a_users(tmp_path: Path) -> None:
    assert write_demo_config("file:///demo/1", tmp_path) == tmp_path / CONFIG_PATH
    assert configured_registry(tmp_path) == "file:///demo/1"
    assert write_demo_config("file:///demo/2", tmp_path) is not None  # the demo's own: replaced
    assert configured_registry(tmp_path) == "file:///demo/2"
    _config(tmp_path, {"registry": "s3://mine/models"})
    assert write_demo_config("file:///demo/3", tmp_path) is None
    assert configured_registry(tmp_path) == "s3://mine/models"
