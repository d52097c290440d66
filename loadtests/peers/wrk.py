"""wrk (compiled load generator) with a Lua script for the POST body; parses --latency output."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    detail: str = ""  # which errors, as wrk names them


def script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    text = body.decode()
    level = "="
    while f"]{level}]" in text:  # a Lua long string whose closing bracket the body does not contain
        level += "="
    lines = ['wrk.method = "POST"', f"wrk.body = [{level}[{text}]{level}]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unreadable wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(out: str) -> Sample:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors, detail = 0, []
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
        detail.append(f"non-2xx {m.group(1)}")
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
        detail += [f"{k} {v}" for k, v in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True)
                   if v != "0"]
    return Sample(rps, p50, p99, requests, errors, ", ".join(detail))


def run(url: str, lua: Path, *, duration: float, connections: int, cpu: str, timeout_s: int = 5) -> Sample:
    cmd = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", f"--timeout={timeout_s}s",
           "--latency", "-s", str(lua), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0 or "Requests/sec" not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout[-300:]}")
    return parse(done.stdout)
