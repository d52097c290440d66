"""GPU check for the gateway's hot swap: after many swaps, GPU memory is back to one model's worth.

Registers two versions of a ~17 MB MLP in a temporary file registry, serves them with the real
gateway (uvicorn in a thread of this process, so `torch.cuda.memory_allocated()` sees its tensors),
and swaps through the admin endpoint while sending requests:

  phase 1  --cache-versions 0: 20 swaps, each a load + release; allocated memory must return to the
           one-model level measured after the first load (weights + cuBLAS workspace), and
           reserved memory must shrink after release (torch.cuda.empty_cache()).
  phase 2  --cache-versions 1: 6 swaps between two versions kept loaded: two models' worth, and
           swaps come from memory (no reload).
  phase 3  load headroom larger than the GPU: every swap takes the safe order (drain, release,
           load); requests during the swaps still succeed.
  phase 4  shadow traffic on the GPU: a second version in the `shadow` stage, mirrored at sample rate
           1.0 with budget 1.0, so every primary batch also runs through the shadow's forward on its own
           lowest-priority CUDA stream (gateway/shadow/mirror.py). A few hundred requests (single rows and
           small batches) with known inputs; every primary answer must equal a CPU forward of the
           production version, the shadow report must have compared every row with no drops or errors,
           and every shadow output in the prediction log must equal a CPU forward of the shadow version
           on the same rows (a missing stream synchronisation would show as wrong or zero outputs).
           After the gateway stops, only cuBLAS workspaces are left on the GPU.

Run on a CUDA machine:  scripts/gpu_check.sh [--phases 4]   (exit status 0 = every check passed)
`--phases` picks phases (default 1,2,3,4; 2 and 3 use phase 1's measurements, so they bring it along).
`--device cpu` runs the same flow without the memory checks (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "gpu-check"
TOKEN = "gpu-check-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MIB = 1 << 20


def register_versions(uri: str, features: int, hidden: int) -> tuple[list[int], int]:
    """Two versions of one model; returns their numbers and the bytes of one model's weights."""
    import torch

    from inferloop.registry import MLP, Registry

    versions, weights = [], 0
    with Registry.open(uri) as reg:
        for seed in (1, 2):
            torch.manual_seed(seed)
            model = MLP(features, 1, [hidden, hidden])
            weights = sum(t.numel() * t.element_size() for t in model.parameters())
            x = torch.randn(256, features, generator=torch.Generator().manual_seed(seed))
            with reg.track(MODEL, actor="gpu-check") as run:
                run.log_param("seed", seed)
                versions.append(run.register(model, example_inputs=x[:8], reference=x))
        reg.promote(MODEL, versions[0], "production", actor="gpu-check")
    return versions, weights


class Gateway:
    def __init__(self, uri: str, cache_dir: Path, device: str, cache_versions: int, headroom: int,
                 shadow: dict | None = None) -> None:
        import uvicorn

        from inferloop.gateway.app import create_app
        from inferloop.gateway.settings import (
            GatewaySettings,
            RegistrySettings,
            RuntimeSettings,
            ServerSettings,
            ShadowSettings,
        )

        settings = GatewaySettings(
            models=(MODEL,),
            server=ServerSettings(admin_token=TOKEN, log_level="warning", admin_wait_s=120.0),
            registry=RegistrySettings(uri=uri, poll_interval_s=0.5),
            runtime=RuntimeSettings(device=device, cache_versions=cache_versions, cache_dir=str(cache_dir),
                                    load_headroom_bytes=headroom),
            shadow=ShadowSettings(**(shadow or {})),
        )
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), loop="uvloop", http="httptools",
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Gateway:
        self.thread.start()
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=self.url) as c:
            while time.monotonic() < deadline:
                try:
                    if c.get("/v2/health/ready").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
        self.failed += not ok


def infer(client: httpx.Client, features: int, expect: int) -> bool:
    body = {"inputs": [{"name": "input", "shape": [4, features], "datatype": "FP32", "data": [0.1] * (4 * features)}]}
    r = client.post(f"/v2/models/{MODEL}/infer", json=body)
    return r.status_code == 200 and r.headers["x-model-version"] == str(expect)


def swap(client: httpx.Client, version: int) -> dict:
    r = client.post(f"/admin/models/{MODEL}/promote", json={"version": version, "reason": "gpu check"}, headers=AUTH)
    r.raise_for_status()
    return r.json()


def allocated(cuda: bool) -> int:
    import torch

    if not cuda:
        return 0
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def reserved(cuda: bool) -> int:
    import torch

    return torch.cuda.memory_reserved() if cuda else 0


PHASE_NAMES = {"swap": 1, "cached": 2, "safe-order": 3, "shadow": 4}


def parse_phases(text: str) -> set[int]:
    phases = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        phase = PHASE_NAMES.get(part) or (int(part) if part.isdigit() else 0)
        if phase not in (1, 2, 3, 4):
            raise ValueError(f"unknown phase {part!r} (1-4 or {', '.join(PHASE_NAMES)})")
        phases.add(phase)
    if not phases:
        raise ValueError("no phase selected")
    return phases


def metric_sum(text: str, name: str, model: str) -> tuple[float, list[str]]:
    """Sum of a Prometheus counter's series for one model, and the series that are not zero."""
    total, nonzero = 0.0, []
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            total += value
            if value:
                nonzero.append(line)
    return total, nonzero


def request_sizes(n: int) -> list[int]:
    """Rows per request: two thirds single rows, the rest small batches of 2 to 8 rows."""
    return [1 if i % 3 else 2 + (i // 3) % 7 for i in range(n)]


def shadow_phase(checks: Checks, uri: str, tmp: Path, args: argparse.Namespace, cuda: bool, v1: int, v2: int,
                 weights: int, before: int) -> None:
    """Phase 4: every primary batch mirrored to a shadow version whose forward runs on its own CUDA stream."""
    import torch

    from inferloop.registry import Registry

    print(f"phase 4: shadow traffic: v{v1} in production, v{v2} in shadow, sample rate 1.0, budget 1.0; "
          f"{args.requests} requests")
    with Registry.open(uri) as reg:
        production = reg.get_pointer(MODEL, "production")
        if production is None or production.version != v1:  # phases 1-3 end on v1; promote it if not
            reg.promote(MODEL, v1, "production", actor="gpu-check", reason="phase 4 primary")
        reg.promote(MODEL, v2, "shadow", actor="gpu-check", reason="phase 4 shadow")
        primary_cpu = reg.load_model(MODEL, v1).eval()
        shadow_cpu = reg.load_model(MODEL, v2).eval()
    sizes = request_sizes(args.requests)
    rng = np.random.default_rng(4)
    inputs = {f"shadow-{i}": rng.normal(size=(n, args.features)).astype(np.float32) for i, n in enumerate(sizes)}
    rows_sent = sum(sizes)
    with torch.inference_mode():
        expect_primary = {rid: primary_cpu(torch.from_numpy(x)).numpy() for rid, x in inputs.items()}
        expect_shadow = {rid: shadow_cpu(torch.from_numpy(x)).numpy() for rid, x in inputs.items()}
    scale = max(float(np.abs(np.concatenate(list(expect_primary.values()))).max()), 1e-3)
    rtol, atol = 1e-4, 1e-5 * scale  # fp32 on the GPU against fp32 on the CPU: summation order differs

    base = allocated(cuda)
    logdir = tmp / "predictions"
    shadow = {"budget": 1.0, "prediction_log": str(logdir), "evaluate_interval_s": 0.5}
    with Gateway(uri, tmp / "cache", args.device, cache_versions=0, headroom=64 * MIB, shadow=shadow) as gw, \
            httpx.Client(base_url=gw.url, timeout=120) as c:
        deadline = time.monotonic() + 120
        report = c.get(f"/admin/models/{MODEL}/shadow", headers=AUTH).json()
        while report.get("shadow_version") != v2 and time.monotonic() < deadline:
            time.sleep(0.2)
            report = c.get(f"/admin/models/{MODEL}/shadow", headers=AUTH).json()
        checks.check(report.get("shadow_version") == v2 and report.get("primary_version") == v1,
                     f"shadow v{report.get('shadow_version')} loaded beside production v{report.get('primary_version')}")
        r = c.post(f"/admin/models/{MODEL}/shadow", json={"sample_rate": 1.0, "reason": "gpu check"}, headers=AUTH)
        checks.check(r.status_code == 200 and r.json().get("sample_rate") == 1.0, "sample rate set to 1.0")
        status = c.get(f"/admin/models/{MODEL}", headers=AUTH).json()
        print(f"  gateway device {status['device']}; observers of the primary batcher: "
              f"{(status.get('batching') or {}).get('observers')}")

        def send(item: tuple[str, np.ndarray]) -> tuple[str, int, str, np.ndarray | None]:
            rid, x = item
            body = {"id": rid, "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                           "data": x.ravel().tolist()}]}
            r = c.post(f"/v2/models/{MODEL}/infer", json=body, headers={"x-request-id": rid})
            if r.status_code != 200:
                return rid, r.status_code, r.text[:200], None
            out = r.json()["outputs"][0]
            return rid, 200, r.headers.get("x-model-version", ""), np.asarray(out["data"], np.float32).reshape(
                out["shape"])

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, inputs.items()))
        seconds = time.perf_counter() - started
        bad = [(rid, code, info) for rid, code, info, _ in answers if code != 200]
        checks.check(not bad, f"{len(answers)} requests ({rows_sent} rows) in {seconds:.1f} s, all 200"
                     + (f"; failures: {bad[:3]}" if bad else ""))
        wrong_version = [rid for rid, code, info, _ in answers if code == 200 and info != str(v1)]
        checks.check(not wrong_version, f"every answer from production v{v1} (x-model-version)"
                     + (f"; not: {wrong_version[:3]}" if wrong_version else ""))
        worst, mismatched = 0.0, []
        for rid, _, _, out in answers:
            if out is None:
                continue
            want = expect_primary[rid]
            if out.shape != want.shape or not np.allclose(out, want, rtol=rtol, atol=atol):
                mismatched.append(rid)
            if out.shape == want.shape:
                worst = max(worst, float(np.abs(out - want).max()))
        checks.check(not mismatched, f"primary answers equal a CPU forward of v{v1} (max |diff| {worst:.2e}, "
                     f"outputs up to {scale:.3f})" + (f"; mismatched: {mismatched[:3]}" if mismatched else ""))

        deadline = time.monotonic() + 60
        while True:  # the shadow runs after the primary answered: wait until every request is accounted for
            shadow_state = c.get(f"/admin/models/{MODEL}/shadow", headers=AUTH).json()
            accounted = shadow_state["mirrored"] + sum(shadow_state["dropped"].values()) \
                + sum(shadow_state["errors"].values())
            if accounted >= len(answers) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        compared = (shadow_state.get("report") or {}).get("compared", 0)
        print(f"  shadow report: mirrored {shadow_state['mirrored']} requests, compared {compared} rows, "
              f"dropped {shadow_state['dropped']}, errors {shadow_state['errors']}, queued rows "
              f"{shadow_state['queued_rows']}")
        checks.check(shadow_state["mirrored"] == len(answers), f"{shadow_state['mirrored']} of {len(answers)} "
                     "requests mirrored")
        checks.check(compared == rows_sent, f"shadow report compared {compared} rows of {rows_sent} sent")
        checks.check(not shadow_state["dropped"] and not shadow_state["errors"], "no shadow drops or errors (report)")
        latency = (shadow_state.get("report") or {}).get("latency_ms") or {}
        if latency:
            print(f"  latency p50/p99 ms: primary {latency['primary']['p50']:.2f}/{latency['primary']['p99']:.2f}, "
                  f"shadow {latency['shadow']['p50']:.2f}/{latency['shadow']['p99']:.2f}")
        metrics = c.get("/metrics").text
        errors, error_lines = metric_sum(metrics, "inferloop_shadow_errors_total", MODEL)
        dropped, dropped_lines = metric_sum(metrics, "inferloop_shadow_dropped_total", MODEL)
        checks.check(errors == 0 and dropped == 0 and "inferloop_shadow_errors_total{" in metrics,
                     f"/metrics: inferloop_shadow_errors_total {errors:g}, inferloop_shadow_dropped_total "
                     f"{dropped:g}" + (f" {error_lines + dropped_lines}" if error_lines or dropped_lines else ""))
        if cuda:
            two = allocated(cuda) - base
            print(f"  production and shadow loaded and used: {two / MIB:.1f} MiB allocated above the phase start")
            checks.check(two >= 2 * weights, f"both versions' weights on the GPU ({two / MIB:.1f} MiB >= "
                         f"{2 * weights / MIB:.1f} MiB)")
    # stopped: the prediction log was flushed on shutdown
    records = [json.loads(line) for f in sorted(logdir.rglob("*.jsonl")) for line in f.read_text().splitlines()
               if line.strip()]
    by_id = {r["request_id"]: r for r in records}
    checks.check(len(records) == len(by_id) == len(inputs) and set(by_id) == set(inputs),
                 f"prediction log: {len(records)} joined records, one per request")
    problems, worst, apart = [], 0.0, 0.0
    for rid, x in inputs.items():
        rec = by_id.get(rid)
        if rec is None:
            continue
        if not (rec["mirrored"] and rec["primary_version"] == v1 and rec["shadow_version"] == v2
                and rec["shadow_error"] is None and rec["shadow_output"] is not None):
            problems.append(f"{rid}: mirrored={rec['mirrored']} versions={rec['primary_version']}/"
                            f"{rec['shadow_version']} error={rec['shadow_error']}")
            continue
        if not np.array_equal(np.asarray(rec["inputs"], np.float32), x):
            problems.append(f"{rid}: logged inputs differ from the sent rows")
            continue
        got = np.asarray(rec["shadow_output"], np.float32)
        want = expect_shadow[rid]
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
            problems.append(f"{rid}: shadow output {got.ravel()[:3]} != CPU v{v2} {want.ravel()[:3]}")
            continue
        worst = max(worst, float(np.abs(got - want).max()))
        apart = max(apart, float(np.abs(got - np.asarray(rec["primary_output"], np.float32)).max()))
    checks.check(not problems, f"every shadow output equals a CPU forward of v{v2} on the logged rows "
                 f"(max |diff| {worst:.2e})" + (f"; {len(problems)} wrong: {problems[:3]}" if problems else ""))
    checks.check(apart > 1e3 * atol, f"shadow outputs differ from the primary's (max |shadow - primary| {apart:.3f}):"
                 " the shadow ran its own weights")
    with Registry.open(uri) as reg:
        reg.clear(MODEL, "shadow", actor="gpu-check", reason="phase 4 done")
    if cuda:
        left = allocated(cuda) - base
        print(f"  gateway stopped: {left / MIB:.1f} MiB left above the phase start (cuBLAS workspaces: one per "
              "thread and stream that ran a forward, the shadow's stream included)")
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is None:
            print("  (this torch has no torch._C._cuda_clearCublasWorkspaces: workspace-only check skipped)")
        else:
            clear()
            rest = allocated(cuda) - before
            checks.check(rest < weights // 2, f"workspace only: {rest / MIB:.1f} MiB left after clearing the cuBLAS "
                         "workspaces (no weights or shadow tensors left on the GPU)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run without memory checks")
    p.add_argument("--swaps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--phases", default="1,2,3,4",
                   help="comma-separated phases to run: 1-4, or swap, cached, safe-order, shadow (default all)")
    p.add_argument("--requests", type=int, default=320, help="phase 4: inference requests sent (default 320)")
    args = p.parse_args()
    try:
        phases = parse_phases(args.phases)
    except ValueError as exc:
        p.error(str(exc))
    if phases & {2, 3} and 1 not in phases:
        print("phases 2 and 3 compare against phase 1's one-model footprint: running phase 1 too")
        phases.add(1)

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("CUDA is not available on this machine (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="inferloop-gpu-check-") as tmp:
        uri = f"file://{Path(tmp) / 'registry'}"
        (v1, v2), weights = register_versions(uri, args.features, args.hidden)
        print(f"device {args.device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), torch {torch.__version__}, "
              f"one model = {weights / MIB:.1f} MiB of weights")
        before = allocated(cuda)

        if 1 in phases:
            print(f"phase 1: {args.swaps} swaps, nothing cached (every swap loads one version and releases the other)")
            with Gateway(uri, Path(tmp) / "cache", args.device, cache_versions=0, headroom=64 * MIB) as gw, \
                    httpx.Client(base_url=gw.url, timeout=120) as c:
                checks.check(infer(c, args.features, v1), "v1 serves")
                one_model = allocated(cuda) - before  # weights plus what the first forward keeps (cuBLAS workspace)
                workspace = one_model - weights
                reserved_one = reserved(cuda)
                if cuda:
                    print(f"  one model loaded and used: {one_model / MIB:.1f} MiB allocated "
                          f"({weights / MIB:.1f} MiB weights + {workspace / MIB:.1f} MiB kept by the first forward)")
                peak_reserved = 0
                for i in range(args.swaps):
                    target = v2 if i % 2 == 0 else v1
                    result = swap(c, target)
                    if not (result["serving"]["applied"] and infer(c, args.features, target)):
                        checks.check(False, f"swap {i + 1} to v{target}: {result}")
                    peak_reserved = max(peak_reserved, reserved(cuda))
                after = allocated(cuda) - before
                if cuda:
                    print(f"  after {args.swaps} swaps: {after / MIB:.1f} MiB allocated, reserved now "
                          f"{reserved(cuda) / MIB:.1f} MiB (peak seen {peak_reserved / MIB:.1f} MiB)")
                status = c.get(f"/admin/models/{MODEL}", headers=AUTH).json()["stages"]["production"]
                checks.check(status["loads"] == args.swaps + 1, f"{status['loads']} loads for {args.swaps} swaps + start")
                checks.check(len(status["slots"]) == 1, "one slot loaded")
                if cuda:
                    checks.check(abs(after - one_model) <= 2 * MIB,
                                 f"allocated back to one model's footprint ({after / MIB:.1f} vs {one_model / MIB:.1f} MiB)")
                    checks.check(after < one_model + weights // 2, "no second model left on the GPU")
                    checks.check(reserved(cuda) <= reserved_one + weights // 2,
                                 f"reserved back to the one-model level after release ({reserved(cuda) / MIB:.1f} vs "
                                 f"{reserved_one / MIB:.1f} MiB): torch.cuda.empty_cache() ran")
            if cuda:
                left = allocated(cuda) - before
                checks.check(left <= workspace + 2 * MIB, f"gateway stopped: {left / MIB:.1f} MiB left (workspace only)")

        if 2 in phases:
            print("phase 2: 6 swaps with one version cached: swaps come from memory")
            with Gateway(uri, Path(tmp) / "cache", args.device, cache_versions=1, headroom=64 * MIB) as gw, \
                    httpx.Client(base_url=gw.url, timeout=120) as c:
                base = allocated(cuda)
                for i in range(6):
                    target = v1 if i % 2 else v2
                    swap(c, target)
                    checks.check(infer(c, args.features, target), f"swap {i + 1}: v{target} serves")
                status = c.get(f"/admin/models/{MODEL}", headers=AUTH).json()["stages"]["production"]
                checks.check(status["loads"] == 2 and status["reuses"] == 5, f"loads {status['loads']}, "
                             f"reuses {status['reuses']} (expected 2 and 5)")
                if cuda:
                    two = allocated(cuda) - before
                    print(f"  two versions loaded: {two / MIB:.1f} MiB allocated (from {(base - before) / MIB:.1f})")
                    checks.check(abs(two - one_model - weights) <= 2 * MIB, "two models' weights, no more")

        if 3 in phases:
            print("phase 3: no room for two versions (headroom > GPU): every swap drains, releases, then loads")
            headroom = (torch.cuda.get_device_properties(0).total_memory * 2) if cuda else 0
            with Gateway(uri, Path(tmp) / "cache", args.device, cache_versions=0, headroom=headroom) as gw, \
                    httpx.Client(base_url=gw.url, timeout=120) as c:
                stop = threading.Event()
                failures: list[int] = []
                served = [0]

                def load() -> None:
                    with httpx.Client(base_url=gw.url, timeout=120) as lc:
                        while not stop.is_set():
                            body = {"inputs": [{"name": "input", "shape": [1, args.features], "datatype": "FP32",
                                                "data": [0.2] * args.features}]}
                            r = lc.post(f"/v2/models/{MODEL}/infer", json=body)
                            served[0] += 1
                            if r.status_code != 200:
                                failures.append(r.status_code)

                threads = [threading.Thread(target=load) for _ in range(4)]
                for t in threads:
                    t.start()
                for i in range(4):
                    swap(c, v2 if i % 2 == 0 else v1)
                stop.set()
                for t in threads:
                    t.join(60)
                status = c.get(f"/admin/models/{MODEL}", headers=AUTH).json()["stages"]["production"]
                if cuda:
                    checks.check(status["last_swap"]["safe_order"], "swaps used the safe order")
                checks.check(not failures, f"{served[0]} requests during safe-order swaps, failures: {failures[:5]}")
                if cuda:
                    checks.check(abs(allocated(cuda) - before - one_model) <= 2 * MIB, "one model's footprint after")
        if 4 in phases:
            shadow_phase(checks, uri, Path(tmp), args, cuda, v1, v2, weights, before)
    print("PASS" if checks.failed == 0 else f"FAIL ({checks.failed} checks)")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
