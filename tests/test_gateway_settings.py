"""Settings come from flags, then INFERLOOP_* environment, then defaults, in one place; bad values
name their source. `inferloop serve` turns user mistakes into one-line errors."""

from __future__ import annotations

import msgspec
import pytest

from inferloop.cli import main
from inferloop.gateway.settings import GatewaySettings, SettingsError, resolve_settings


def test_defaults_when_nothing_is_given() -> None:
    s = resolve_settings({}, {})
    assert s == GatewaySettings()
    assert s.server.port == 8000 and s.batching.enabled and s.batching.max_batch_size == 64
    assert s.registry.uri == "file://.inferloop/registry" and s.runtime.device == "auto"
    assert s.server.admin_token is None


def test_flags_beat_environment_which_beats_defaults() -> None:
    env = {"INFERLOOP_PORT": "9001", "INFERLOOP_MAX_BATCH_SIZE": "32", "INFERLOOP_MODELS": "a, b,,c",
           "INFERLOOP_BATCHING": "off", "INFERLOOP_POLL_INTERVAL": "0.5", "INFERLOOP_ADMIN_TOKEN": "s3cret",
           "INFERLOOP_REGISTRY": "s3://bucket/prefix", "INFERLOOP_CACHE_DIR": "none"}
    s = resolve_settings({"port": 9002, "max_batch_delay_ms": 5.0, "model": None}, env)
    assert s.server.port == 9002  # flag
    assert s.batching.max_batch_size == 32 and s.batching.max_delay_ms == 5.0 and s.batching.enabled is False
    assert s.models == ("a", "b", "c") and s.registry.poll_interval_s == 0.5
    assert s.server.admin_token == "s3cret" and s.registry.uri == "s3://bucket/prefix"
    assert s.runtime.cache_dir is None  # 'none' turns the disk cache off
    assert resolve_settings({"model": ["x", "y"]}, env).models == ("x", "y")


@pytest.mark.parametrize("flags,env,words", [
    ({}, {"INFERLOOP_PORT": "eighty"}, "$INFERLOOP_PORT"),
    ({"max_batch_size": 0}, {}, "--max-batch-size"),
    ({"poll_interval": -1.0}, {}, "--poll-interval"),
    ({}, {"INFERLOOP_BATCHING": "maybe"}, "$INFERLOOP_BATCHING"),
    ({"log_level": "loud"}, {}, "--log-level"),
])
def test_a_bad_value_names_where_it_came_from(flags: dict, env: dict, words: str) -> None:
    with pytest.raises(SettingsError, match=words.replace("$", r"\$")):
        resolve_settings(flags, env)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"server": {"prot": 1}}, GatewaySettings)


@pytest.mark.parametrize("argv,words", [
    (["serve"], "nothing to serve"),
    (["serve", "--model", "Bad/Name"], "invalid model name"),
    (["serve", "--model", "m", "--registry", "ftp://nowhere"], "ftp"),
    (["serve", "--model", "m", "--device", "cuda:0"], "CUDA is not available"),
    (["serve", "--model", "m", "--device", "tpu"], "unknown device"),
    (["serve", "--model", "m", "--admin-token-file", "/nonexistent/token"], "--admin-token-file"),
    (["serve", "--model", "m", "--max-batch-size", "0"], "--max-batch-size"),
])
def test_serve_reports_user_mistakes_in_one_line(argv: list[str], words: str, capsys, monkeypatch) -> None:
    for var in ("INFERLOOP_MODELS", "INFERLOOP_REGISTRY", "INFERLOOP_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inferloop: error:") and words in err and "\n" not in err


def test_every_setting_has_a_flag_except_the_token() -> None:
    import argparse

    from inferloop.gateway import cli
    from inferloop.gateway.settings import SOURCES

    sub = argparse.ArgumentParser().add_subparsers()
    cli.register_parser(sub)
    dests = {action.dest for action in sub.choices["serve"]._actions}
    # the token comes from the environment or --admin-token-file, never argv (visible in `ps`)
    assert [dest for dest, _ in SOURCES.values() if dest not in dests] == ["admin_token"]
