"""What a newcomer reads from the command line around the demo: Ctrl-C says what it stopped and where
the work is; the timeline never cuts a reason mid-word nor prints raw floats; `inferloop train --help`
describes that command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from inferloop.cli import build_parser
from inferloop.demo import _short


def test_ctrl_c_during_the_demo_says_what_it_stopped_and_where_the_work_is(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERLOOP_")} | {"PYTHONUNBUFFERED": "1"}
    out_path = tmp_path / "out.txt"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-P", "-m", "inferloop.cli", "demo", "--rows-per-day", "400"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while "serving on 127.0.0.1" not in out_path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, out_path.read_text()
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the demo (its services have their own session)
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = out_path.read_text()
    assert code == 130, text
    assert "interrupted: stopping trainer (pid" in text and "gateway-0 (pid" in text, text
    work = tmp_path / ".inferloop" / "demo"
    assert f"its work directory is left in {work}" in text and "Traceback" not in text, text
    pids = [int(p.split(")")[0]) for p in text.split("(pid ")[1:]]
    for pid in pids:  # stopped, not orphaned
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_timeline_reasons_are_cut_at_words_and_floats_are_short() -> None:
    reason = ("shadow v2 met every rule over 2150 mirrored rows (prediction PSI 0.6955714604448567, "
              "p99 latency ratio 1.056950048903698) " + "and more words " * 30)
    short = _short(reason)
    assert "0.6956" not in short and "0.6955 " not in short and "0.6955," in short and "1.0569)" in short
    assert short.endswith(" …") and len(short) <= 240
    words = set(reason.replace("0.6955714604448567", "0.6955").replace("1.056950048903698", "1.0569").split())
    assert set(short.removesuffix(" …").split()) <= words  # whole words only
    assert _short("v1 registered 2024-01-01 from 10.5 rows") == "v1 registered 2024-01-01 from 10.5 rows"


def test_train_help_describes_the_train_command() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["train"].format_help()  # type: ignore[union-attr]
    assert "Build one version from a policy" in text and "Exit codes" in text
    assert "`inferloop trainer serve`" not in text and "data generate" not in text
