"""Local-directory backend.

Create-only writes use a fully written temp file hard-linked into place (link fails if the target
exists), so a reader never sees a partial object. Replacements take an exclusive `flock` on a lock
file outside the key space, re-check the ETag, then `os.replace` a fsynced temp file. The ETag is the
file's (inode, mtime, size): every replacement makes a new inode, and a stat is the whole cost of a
conditional GET.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import uuid
from pathlib import Path

from inferloop.registry.errors import Conflict, InvalidName, NotFound, Unavailable
from inferloop.registry.store.base import StoredObject

_LOCKS = ".locks"


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise InvalidName(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    # -- reads -------------------------------------------------------------------------------
    def _get(self, key: str, etag: str | None = None) -> StoredObject | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                tag = _etag(st)
                if etag is not None and tag == etag:
                    return None
                return StoredObject(fh.read(), tag)
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.uri}") from None
        except NotADirectoryError:
            raise NotFound(f"{key} not found in {self.uri}") from None
        except OSError as exc:
            raise Unavailable(f"cannot read {key} in {self.uri}: {exc.strerror}") from exc

    async def get(self, key: str) -> StoredObject:
        obj = await asyncio.to_thread(self._get, key)
        assert obj is not None
        return obj

    async def get_if_changed(self, key: str, etag: str | None) -> StoredObject | None:
        return await asyncio.to_thread(self._get, key, etag)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    # -- writes ------------------------------------------------------------------------------
    def _write_temp(self, path: Path, data: bytes) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot create {path.parent}: {exc.strerror}") from exc
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise Unavailable(f"cannot write {path}: {exc.strerror}") from exc
        return tmp

    def _put_if_absent(self, key: str, data: bytes) -> str:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise Conflict(f"{key} already exists") from None
        except OSError as exc:
            raise Unavailable(f"cannot write {key}: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return _etag(path.stat())

    async def put_if_absent(self, key: str, data: bytes) -> str:
        return await asyncio.to_thread(self._put_if_absent, key, data)

    def _lock_path(self, key: str) -> Path:
        locks = self.root / _LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        return locks / hashlib.sha256(key.encode()).hexdigest()

    def _put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        path = self._path(key)
        with open(self._lock_path(key), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                current = _etag(path.stat())
            except FileNotFoundError:
                current = None
            if current != etag:
                expected = "absent" if etag is None else f"ETag {etag}"
                raise Conflict(f"{key} changed: expected {expected}, found {current or 'absent'}")
            tmp = self._write_temp(path, data)
            try:
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise Unavailable(f"cannot write {key}: {exc.strerror}") from exc
            _fsync_dir(path.parent)
            return _etag(path.stat())

    async def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        return await asyncio.to_thread(self._put_if_match, key, data, etag)

    # -- listing -----------------------------------------------------------------------------
    def _list_children(self, prefix: str, start_after: str, limit: int) -> list[str]:
        directory = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [n for n in names if n > start_after][:limit]

    async def list_children(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        return await asyncio.to_thread(self._list_children, prefix, start_after, limit)

    def _check(self, create: bool) -> None:
        if not create:  # a reader: a missing directory is a typo, not an empty registry to make
            if not self.root.is_dir():
                raise NotFound(f"no registry at {self.uri}" + (" (it is a file)" if self.root.exists() else ""))
            if not os.access(self.root, os.R_OK | os.X_OK):
                raise Unavailable(f"registry directory {self.root} is not readable")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot use registry directory {self.root}: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"registry directory {self.root} is not writable ({errno.errorcode[errno.EACCES]})")

    async def check(self, create: bool = True) -> None:
        await asyncio.to_thread(self._check, create)

    async def close(self) -> None:
        return None
