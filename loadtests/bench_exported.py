"""Forward cost of a registered torch.export program against the eager module it came from.

    python -m loadtests.bench_exported [--repeats 7 --calls 2000]

For each model and batch size, in one process, interleaved: the eager module; the program through
torch's wrapper (`torch.export.load(...).module()`) with its per-call input checks; the wrapper
without them (how the gateway ran programs before `registry.program_call`); and the program as the
gateway runs it now (`open_runnable`: the graph called directly, after `ShapeRules`). Medians of
per-call microseconds over `--repeats` rounds; ratios to eager are what to read (this machine is
shared, absolute times drift)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from inferloop.registry.exported import FORMAT, export_program, load_program
from inferloop.registry.manifest import ArtifactInfo, InputSignature
from inferloop.registry.runnable import TorchRunnable, open_runnable


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "mlp 8-64-64-1": (nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)),
                          torch.randn(64, 8)),
        "mlp 4x1024": (nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), *[m for _ in range(3) for m in
                                                                    (nn.Linear(1024, 1024), nn.ReLU())],
                                     nn.Linear(1024, 1)), torch.randn(64, 64)),
        "cnn1d 4x32": (nn.Sequential(nn.Conv1d(4, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 16, 3, padding=1),
                                     nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3)),
                       torch.randn(64, 4, 32)),
    }


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| model | batch | eager µs | wrapper with torch's input checks µs (× eager) "
          "| wrapper without them µs (× eager) | program as served µs (× eager) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (module, x) in models().items():
        module.eval()
        data, inputs, outputs, layout = export_program(module, x[:2])
        signature = InputSignature(features=[], inputs=inputs, output_tensors=outputs, output_kind="none")
        checked = load_program(data)
        checked.validate_inputs = True  # what torch does by default
        program = TorchRunnable(checked, signature, "cpu")
        bare = load_program(data)
        bare.validate_inputs = False
        unchecked = TorchRunnable(bare, signature, "cpu")
        served = open_runnable(data, ArtifactInfo("", len(data), FORMAT), signature)  # as the gateway runs it
        assert served.call is not None
        for batch in (1, 64):
            xb = x[:batch].contiguous()
            arrays = [xb.numpy()]
            calls = max(50, args.calls // (20 if "1024" in name else 1))
            with torch.inference_mode():
                np.testing.assert_allclose(program.run(arrays)[0], module(xb).numpy(), atol=1e-5)
                np.testing.assert_array_equal(served.run(arrays)[0], program.run(arrays)[0])

                def eager(xb: torch.Tensor = xb, module: nn.Module = module) -> object:  # numpy in and out
                    with torch.inference_mode():
                        return module(torch.from_numpy(xb.numpy())).numpy()

            rounds: dict[str, list[float]] = {"eager": [], "program": [], "unchecked": [], "served": []}
            for _ in range(args.repeats):
                rounds["eager"].append(per_call_us(eager, calls))
                rounds["program"].append(per_call_us(lambda a=arrays, r=program: r.run(a), calls))
                rounds["unchecked"].append(per_call_us(lambda a=arrays, r=unchecked: r.run(a), calls))
                rounds["served"].append(per_call_us(lambda a=arrays, r=served: r.run(a), calls))
            e, pr, un, sv = (statistics.median(rounds[k]) for k in ("eager", "program", "unchecked", "served"))
            print(f"| {name} | {batch} | {e:.1f} | {pr:.1f} ({pr / e:.2f}×) | {un:.1f} ({un / e:.2f}×) "
                  f"| {sv:.1f} ({sv / e:.2f}×) |")


if __name__ == "__main__":
    main()
