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

Run on a CUDA machine:  scripts/gpu_check.sh   (exit status 0 = every check passed)
`--device cpu` runs the same flow without the memory checks (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "gpu-check"
TOKEN = "gpu-check-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MIB = 1 << 20


def register_versions(uri: str, features: int, hidden: int) -> tuple[list[int], int]:
    """Two versions of one model; returns their numbers and the bytes of one model's weights."""
    import torch

    from registry import MLP, Registry

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
    def __init__(self, uri: str, cache_dir: Path, device: str, cache_versions: int, headroom: int) -> None:
        import uvicorn

        from gateway.app import create_app
        from gateway.settings import GatewaySettings, RegistrySettings, RuntimeSettings, ServerSettings

        settings = GatewaySettings(
            models=(MODEL,),
            server=ServerSettings(admin_token=TOKEN, log_level="warning", admin_wait_s=120.0),
            registry=RegistrySettings(uri=uri, poll_interval_s=0.5),
            runtime=RuntimeSettings(device=device, cache_versions=cache_versions, cache_dir=str(cache_dir),
                                    load_headroom_bytes=headroom),
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run without memory checks")
    p.add_argument("--swaps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--features", type=int, default=64)
    args = p.parse_args()

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
    print("PASS" if checks.failed == 0 else f"FAIL ({checks.failed} checks)")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
