"""The peer benchmark's own machinery (no peer venv needed): wrk output parsing, the Lua body
script, and a real bare-ceiling server started, loaded with wrk and stopped with its whole tree."""

from __future__ import annotations

import shutil

import pytest

from loadtests.bench_peers import _close, prepare
from loadtests.peers import configs, procs, wrk

WRK_OUT = """Running 10s test @ http://127.0.0.1:8000/predict
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.10ms    3.20ms  95.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%   13.00ms
     90%   15.00ms
     99%    1.20s
  52345 requests in 10.00s, 8.10MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   5234.50
Transfer/sec:    829.00KB
"""


def test_wrk_output_is_parsed_with_units_and_errors() -> None:
    s = wrk.parse(WRK_OUT)
    assert (s.rps, s.p50_ms, s.p99_ms, s.requests, s.errors) == (5234.5, 0.85, 1200.0, 52345, 12)
    assert s.detail == "non-2xx 7, read 3, timeout 2"


def test_lua_script_holds_any_body(tmp_path) -> None:
    body = b'{"x": [[1.0]], "y": "]=]"}'
    text = wrk.script(tmp_path / "post.lua", body, {"Content-Type": "application/json"}).read_text()
    assert "wrk.body = [==[" + body.decode() + "]==]" in text


def test_answers_are_checked_wherever_the_value_sits() -> None:
    assert _close({"outputs": [{"data": [0.12345]}]}, 0.12346)
    assert not _close({"y": [0.2]}, 0.12346)
    assert not _close(True, 1.0)


@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("taskset") is None, reason="wrk/taskset missing")
def test_bare_ceiling_serves_the_same_forward_and_stops_cleanly(tmp_path) -> None:
    ctx, expected = prepare(tmp_path, with_gateway=False)
    cfg = configs.CONFIGS[0]
    launch = cfg.build(ctx, tmp_path, configs.free_port())
    server = procs.start(launch.cmd, env=launch.env, cwd=launch.cwd, log=tmp_path / "server.log", cpu="0-1")
    try:
        answer = procs.wait_ready(server, launch.url, launch.body, launch.headers, 60)
        assert _close(answer, expected)
        lua = wrk.script(tmp_path / "post.lua", launch.body, launch.headers)
        sample = wrk.run(launch.url, lua, duration=1, connections=4, cpu="0-1")
        assert sample.requests > 0 and sample.errors == 0
        assert server.rss_mib() > 10
    finally:
        procs.stop(server)
    assert not server.tree()
