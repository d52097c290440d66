"""Run a planned build in this process (`launcher: local`) or on N processes under torchrun.

Under torchrun every rank runs `trainer.worker` on the same serialised `BuildRequest`; rank 0 writes
its summary (or its error) to a result file that this process reads back. Worker output is streamed
to `progress` line by line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

import msgspec

from inferloop.trainer.errors import LaunchError, TrainerError
from inferloop.trainer.fit import Progress
from inferloop.trainer.pipeline import BuildRequest, BuildSummary, execute, stderr_progress


class WorkerResult(msgspec.Struct, frozen=True):
    summary: BuildSummary | None = None
    error: str | None = None


def launch(request: BuildRequest, progress: Progress = stderr_progress) -> BuildSummary:
    if request.spec.launcher == "local":
        summary = execute(request, progress=progress)
        assert summary is not None
        return summary
    return run_torchrun(request, progress)


def torchrun_command(request_path: Path, nproc: int) -> list[str]:
    # -P here and PYTHONSAFEPATH for the workers torchrun starts: the working directory never shadows our modules
    return [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "inferloop.trainer.worker", str(request_path)]


def run_torchrun(request: BuildRequest, progress: Progress) -> BuildSummary:
    nproc = request.spec.nproc
    with tempfile.TemporaryDirectory(prefix="inferloop-torchrun-") as tmp:
        request_path, result_path = Path(tmp, "request.json"), Path(tmp, "result.json")
        request_path.write_bytes(msgspec.json.encode(request))
        # --standalone is one machine: keep gloo's sockets on loopback rather than whatever interface
        # the host name resolves to (unless the operator chose one).
        env = {**os.environ, "OMP_NUM_THREADS": str(request.spec.threads), "PYTHONSAFEPATH": "1",
               "INFERLOOP_RESULT_PATH": str(result_path),
               "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
        tail: deque[str] = deque(maxlen=20)
        try:
            proc = subprocess.Popen(torchrun_command(request_path, nproc), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env)
        except OSError as exc:
            raise LaunchError(f"cannot start torchrun: {exc}") from None
        assert proc.stdout is not None
        with proc:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                progress(line)
        if result_path.exists():
            result = msgspec.json.decode(result_path.read_bytes(), type=WorkerResult)
            if result.error is not None:
                raise TrainerError(result.error)
            if result.summary is not None:
                return result.summary
        last = next((t for t in reversed(tail) if t.strip()), "no output")
        raise LaunchError(f"torchrun with {nproc} processes exited with code {proc.returncode} "
                          f"without a result: {last}")
