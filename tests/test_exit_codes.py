"""`inferloop train` exits 2 on a data error every time, never 134 ("terminate called without an active
exception") from a native thread still alive while the interpreter shuts down.

The culprit was pyarrow: `pq.read_table` of a partition held in a Python `bytes` object left the last
reference to that memory with one of Arrow's worker threads (the read-ahead cache); the thread dropped
it after the main thread had started finalising, blocked on the GIL, was ended by `pthread_exit`, and
the unwinding through Arrow's C++ destructor called `std::terminate`. It struck a few percent of runs
whose error came right after the read, so the proof is many runs: 200 `inferloop train` error runs,
each a real `main()` followed by a real interpreter exit. To fit the budget of a small machine, one
parent imports `inferloop.cli` once and forks each run from there (the children import pyarrow and read
the partition themselves, as the CLI does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .trainer_support import make_data, policy_dict, write_policy

RUNS, PARALLEL = 200, 2

# Runs `inferloop ARGV` RUNS times, PARALLEL at a time, each in a forked child that leaves through the
# normal interpreter exit (SystemExit at top level: atexit, thread shutdown, finalisation). Prints the
# exit codes as JSON; each child's stderr is kept in OUT/<i>.err.
_FORKER = r"""
import gc, json, os, sys
from inferloop.cli import main

gc.freeze()  # the children's collector skips what they share with this parent (fewer copied pages)

argv, runs, parallel, out = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
codes = [None] * runs
running = {}
started = 0
while started < runs or running:
    while started < runs and len(running) < parallel:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            err = os.open(os.path.join(out, f"{started}.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(err, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.exit(main(argv))
        running[pid] = started
        started += 1
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
print(json.dumps(codes))
"""


def _nan_first_partition(tmp_path: Path) -> Path:
    """A one-partition window whose first feature has a NaN: the error comes right after the read."""
    data = make_data(tmp_path, days=1)
    policy = policy_dict(data)
    policy["training"]["data"]["latest"] = 1
    path = next(data.glob("*.parquet"))
    table = pq.read_table(path)
    first = policy["training"]["features"][0]
    values = table.column(first).to_numpy().astype(np.float64)
    values[0] = np.nan
    pq.write_table(table.set_column(table.column_names.index(first), first, pa.array(values)), path)
    return write_policy(tmp_path / "nan.yaml", policy)


def test_two_hundred_data_error_runs_all_exit_2(tmp_path: Path) -> None:
    policy = _nan_first_partition(tmp_path)
    argv = ["train", "--policy", str(policy), "--registry", f"file://{tmp_path / 'registry'}"]
    out = tmp_path / "runs"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", _FORKER, json.dumps(argv), str(RUNS), str(PARALLEL), str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    codes: list[int] = json.loads(proc.stdout)
    errors = [(out / f"{i}.err").read_text() for i in range(RUNS)]
    bad = {i: (code, errors[i]) for i, code in enumerate(codes) if code != 2}
    assert not bad, f"{len(bad)}/{RUNS} runs did not exit 2: {list(bad.items())[:3]}"
    # every run printed exactly the one-line error, and nothing after it
    assert all(e.count("\n") == 1 and "NaN or infinite" in e and e.startswith("inferloop: error: partition ")
               for e in errors), {e for e in errors}
