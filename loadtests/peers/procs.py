"""Server processes: start one pinned to a core in its own session, find its whole process tree
(by session and by ancestry, so daemons that start their own session are still found), measure the
tree's resident memory, and end exactly those processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, session id, start time) of a live process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[3]), int(fields[19])


@dataclass
class Server:
    proc: subprocess.Popen
    log: Path
    # (pid, start time) of every process ever seen in the tree: a pid is only signalled while it
    # still names the same process
    seen: set[tuple[int, int]] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> set[tuple[int, int]]:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (st := _stat(int(entry))) is not None:
                stats[int(entry)] = st
        members = {pid for pid, (_, sid, _) in stats.items() if sid == self.pid}
        members |= {pid for pid, start in self.seen if stats.get(pid, (0, 0, -1))[2] == start}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _, _) in stats.items() if ppid in members} - members
            members |= children
            grew = bool(children)
        now = {(pid, stats[pid][2]) for pid in members if pid in stats}
        self.seen |= now
        return now

    def rss_mib(self) -> float:
        total_kb = 0
        for pid, _ in self.tree():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
            except OSError:
                pass
        return total_kb / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the processes of the tree now alive."""
        ticks = 0
        for pid, _ in self.tree():
            try:
                raw = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path, cpu: str) -> Server:
    out = open(log, "ab")
    try:
        proc = subprocess.Popen(["taskset", "-c", cpu, *cmd], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()
    server = Server(proc, log)
    server.tree()
    return server


def stop(server: Server, grace: float = 10.0) -> None:
    """SIGTERM the tree, SIGKILL what is left after `grace` seconds; waits until none is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        members = server.tree()
        if not members:
            break
        for pid, _ in members:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            server.proc.poll()
            if not server.tree():
                break
            time.sleep(0.2)
    server.proc.poll()


class NotReady(RuntimeError):
    pass


def wait_ready(server: Server, url: str, body: bytes, headers: dict[str, str], timeout: float) -> object:
    """POST the benchmark request until it answers 200; returns the decoded JSON answer."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise NotReady(f"exited with code {server.proc.returncode}: {server.log_tail()}")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except (OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise NotReady(f"not ready after {timeout:.0f} s (last: {last}): {server.log_tail()}")
