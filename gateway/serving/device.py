"""Devices: which one to use, one executor thread per device for torch work, and free memory.

Each device gets one thread for inference (batches on one device serialise anyway, and one thread
keeps CUDA streams and caches predictable); loading and warm-up use a separate thread so a slow
load never stalls serving. The one exception is a CPU forward measured to be shorter than the
hand-off itself would cost (`run_here`, chosen by the batcher): it runs on the caller's thread,
and only while the device thread has nothing to do, so forwards on one device still never overlap.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
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
    """A single named thread that runs torch work for one device (or for loading).

    The hand-off is a queue and one `call_soon_threadsafe` back, not `run_in_executor`: that bridges
    a `concurrent.futures.Future` (a lock and a condition each) to an asyncio one through callbacks
    on both sides, which cost ~10 % of the event loop's time at 8 connections (py-spy), once per
    batch, for nothing this single-thread case needs."""

    def __init__(self, device: str, role: str = "infer", torch_threads: int | None = None) -> None:
        self.device = device
        self.role = role
        self._torch_threads = torch_threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"inferloop-{role}-{device}", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
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

    def _work(self) -> None:
        self._init_thread()
        while (job := self._jobs.get()) is not None:
            fn, args, settle = job
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, as an executor would
                settle(None, exc)
            else:
                settle(result, None)
            finally:
                self._count(-1)
            del job, fn, args, settle  # drop the batch's arrays before waiting for the next job

    def _count(self, delta: int) -> None:
        with self._busy_lock:
            self._busy += delta

    def _put(self, fn: Callable[..., Any], args: tuple[Any, ...], settle: _Settle) -> None:
        if self._closed:
            raise RuntimeError(f"the {self.role} executor for {self.device} is shut down")
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self._thread.start()
                    self._started = True
        self._count(1)
        self._jobs.put((fn, args, settle))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(_settle, future, result, exc)
            except RuntimeError:  # the loop is closed: nobody waits for this any more
                pass

        self._put(fn, args, settle)
        return await future

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn` on the device thread from any thread (tests hold the device busy with it)."""
        future: Future[T] = Future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)

        self._put(fn, args, settle)
        return future

    def shutdown(self) -> None:
        """Drop what is queued (its callers get CancelledError), let the running job end, stop the thread."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[2](None, CancelledError())
                self._count(-1)
        self._jobs.put(None)
        if self._started:
            self._thread.join()


_Settle = Callable[[Any, "BaseException | None"], None]
_Job = tuple[Callable[..., Any], tuple[Any, ...], _Settle]


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller was cancelled
        return
    if exc is None:
        future.set_result(result)
    elif isinstance(exc, CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)


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
