"""Devices: which one to use, one executor thread per device for torch work, and free memory.

torch calls never run on the event loop. Each device gets one thread for inference (batches on one
device serialise anyway, and one thread keeps CUDA streams and caches predictable); loading and
warm-up use a separate thread so a slow load never stalls serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DeviceUnavailable(ValueError):
    """The configured device does not exist on this machine."""


def resolve_device(wanted: str) -> str:
    """'auto' → 'cuda:0' when CUDA is present, else 'cpu'; 'cuda' → 'cuda:0'; checks the index exists."""
    import torch

    wanted = wanted.strip().lower()
    if wanted == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if wanted == "cpu":
        return "cpu"
    if wanted == "cuda" or wanted.startswith("cuda:"):
        index = 0 if wanted == "cuda" else wanted.split(":", 1)[1]
        if not str(index).isdigit():
            raise DeviceUnavailable(f"invalid device {wanted!r}: expected cuda:N")
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {wanted!r} requested but CUDA is not available here")
        if int(index) >= torch.cuda.device_count():
            raise DeviceUnavailable(f"device {wanted!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
        return f"cuda:{int(index)}"
    raise DeviceUnavailable(f"unknown device {wanted!r}: expected auto, cpu, cuda or cuda:N")


class DeviceExecutor:
    """A single named thread that runs torch work for one device (or for loading)."""

    def __init__(self, device: str, role: str = "infer", torch_threads: int | None = None) -> None:
        self.device = device
        self.role = role
        self._torch_threads = torch_threads
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"inferloop-{role}-{device}",
                                        initializer=self._init_thread)
        self._closed = False

    def _init_thread(self) -> None:
        import torch

        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn` on the device thread from any thread (tests hold the device busy with it)."""
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)


def return_large_frees_to_os(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations of `threshold` bytes or more (model weights) with mmap, so a
    released model's memory goes back to the OS. By default glibc raises that threshold after the
    first large free and then keeps freed weights in its heap: RSS would climb by a few models'
    worth over the first swaps. Returns False where this is not glibc."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD; fixing it disables the dynamic raise
    except (OSError, AttributeError):
        return False


class DeviceMemory:
    """Free memory on a device as torch can use it: the driver's free bytes plus what torch's caching
    allocator holds but is not using. None on CPU (no budget is enforced there)."""

    def free_bytes(self, device: str) -> int | None:
        if not device.startswith("cuda"):
            return None
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))

    def return_cached(self, device: str) -> None:
        """Give cached, unused blocks back to the driver (after a model's tensors are gone)."""
        if device.startswith("cuda"):
            import torch

            with torch.cuda.device(device):
                torch.cuda.empty_cache()
