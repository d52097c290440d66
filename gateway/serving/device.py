"""Devices: which one to use, one executor thread per device for torch work, and free memory.

Each device gets one thread for inference (batches on one device serialise anyway, and one thread
keeps CUDA streams and caches predictable); loading and warm-up use a separate thread so a slow
load never stalls serving. The one exception is a CPU forward measured to be shorter than the
hand-off itself would cost (`run_here`, chosen by the batcher): it runs on the caller's thread,
and only while the device thread has nothing to do, so forwards on one device still never overlap.
"""

from __future__ import annotations

import asyncio
import threading
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
        self._busy = 0  # calls queued or running on the thread
        self._busy_lock = threading.Lock()
        self._ready = threading.local()  # threads set up for torch work (`_init_thread` done)

    @property
    def can_run_here(self) -> bool:
        """A forward may run on the caller's thread now: CPU (a CUDA forward's result waits for the
        GPU) and nothing queued or running on the device thread."""
        return self._busy == 0 and self.device == "cpu"

    def run_here(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the calling thread (the event loop), set up as the device thread is. Only for
        work shorter than a hand-off (~40–80 µs of CPU and two context switches): it blocks the caller."""
        if not getattr(self._ready, "done", False):
            self._init_thread()
        return fn(*args)

    def _init_thread(self) -> None:
        import torch

        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)
        self._ready.done = True  # torch's thread count is per thread: the caller of `run_here` needs it too

    def _count(self, delta: int) -> None:
        with self._busy_lock:
            self._busy += delta

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        self._count(1)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._count(-1)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn` on the device thread from any thread (tests hold the device busy with it)."""
        self._count(1)
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _f: self._count(-1))
        return future

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
