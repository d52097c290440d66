"""`FileWatch`: be told when one file in a directory is created or replaced, through Linux inotify
read on the event loop (no thread, no dependency: libc through ctypes).

The change feed uses it on a `file://` registry so that a replica re-reads the change record as soon
as a writer replaces it, instead of at its next poll. It is only a hint: inotify sees writes made
through this machine's kernel (not another host's writes to a shared NFS mount), so the feed keeps
polling the record at its interval either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
import sys
from pathlib import Path

log = logging.getLogger("inferloop.gateway")

_IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x00000008, 0x00000080, 0x00000100
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, 0o2000000
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)


class FileWatch:
    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name.encode()
        self.changed = asyncio.Event()
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> bool:
        """Watch; False (and nothing held) where inotify is not available or the directory is absent."""
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return False
        if fd < 0:
            return False
        mask = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        if libc.inotify_add_watch(fd, os.fsencode(self.directory), mask) < 0:
            os.close(fd)
            return False
        self._fd, self._loop = fd, asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)
        return True

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            _, _, _, length = _HEADER.unpack_from(data, offset)
            name = data[offset + _HEADER.size: offset + _HEADER.size + length].rstrip(b"\0")
            offset += _HEADER.size + length
            if name == self.name:
                self.changed.set()

    def close(self) -> None:
        if self._fd is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
        self._fd = None
