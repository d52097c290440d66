"""torchrun entry point: `python -m torch.distributed.run ... -m trainer.worker REQUEST.json`.

Each rank joins the process group (gloo on CPU, NCCL on CUDA) and runs the same `execute`; rank 0
writes a `WorkerResult` to $INFERLOOP_RESULT_PATH. A handled error on rank 0 is written there and
rank 0 exits 0 (so torchrun adds no report of its own); on another rank it exits 1 so that torchrun
stops the group instead of leaving rank 0 waiting.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import msgspec

from inferloop.registry import RegistryError
from inferloop.trainer.errors import TrainerError
from inferloop.trainer.fit import DistInfo, resolve_device
from inferloop.trainer.launcher import WorkerResult
from inferloop.trainer.pipeline import BuildRequest, execute, stderr_progress


def main(argv: list[str]) -> int:
    import torch
    import torch.distributed as dist

    request = msgspec.json.decode(Path(argv[0]).read_bytes(), type=BuildRequest)
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                    local_rank=int(os.environ["LOCAL_RANK"]))
    result_path = Path(os.environ["INFERLOOP_RESULT_PATH"])

    def report(result: WorkerResult) -> None:
        if info.is_main:
            result_path.write_bytes(msgspec.json.encode(result))

    try:
        device = resolve_device(request.spec.device, info)
        if device.startswith("cuda"):
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=dt.timedelta(minutes=10))
        try:
            summary = execute(request, info, progress=stderr_progress)
        finally:
            dist.destroy_process_group()
    except (TrainerError, RegistryError) as exc:
        if os.environ.get("INFERLOOP_DEBUG") and exc.__cause__ is not None and info.is_main:
            import traceback

            traceback.print_exception(exc.__cause__)  # the user's own error, in full
        report(WorkerResult(error=str(exc)))
        return 0 if info.is_main else 1
    if summary is not None:
        report(WorkerResult(summary=summary))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # The result is written and the process group is gone: leave without interpreter finalisation.
    # Arrow's thread pool can still hold the last reference to a table (the entrypoint's data) and
    # abort in its destructor at exit ("terminate called without an active exception", SIGABRT),
    # which torchrun reports as a failed rank after the build succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
