"""Where a training window's partitions live: a local directory or an S3 prefix, read alike.

A partition is one Parquet file `<name>.parquet` directly in the source; names starting with "." or
"_" (hidden files, `_dataset.json`-style sidecars, writers' temporary files) and anything nested
below are not partitions. Each partition is read whole into memory Arrow owns, so the caller hashes
and parses the very same bytes.

S3 goes through the registry's `S3Store`, so a data source takes the same endpoint settings as a
registry (`--s3-endpoint`, else `AWS_ENDPOINT_URL`: AWS, MinIO, Ceph). Its calls run on a private
event loop the source owns; close the source (or use it as a context manager) to release them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar
from urllib.parse import unquote, urlparse

from inferloop.trainer.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

    from inferloop.registry.store.s3 import S3Store

SUFFIX = ".parquet"
FORMS = "a directory path, file:///DIR or s3://BUCKET/PREFIX"

T = TypeVar("T")


class PartitionSource(Protocol):
    uri: str  # canonical: "file:///abs/dir" or "s3://bucket/prefix", no trailing slash

    def names(self) -> list[str]:
        """Partition names (file name minus ".parquet"), sorted."""

    def read(self, name: str) -> pa.Buffer:
        """The partition file's bytes, read once, in memory Arrow owns."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def open_source(source: str, s3_endpoint: str | None = None) -> PartitionSource:
    """A plain path (relative to the working directory, `~` expanded), a file:// URI or an s3:// URI."""
    if not source.strip():
        raise DataError(f"empty data source: use {FORMS}")
    if "://" not in source:
        return LocalSource(Path(source).expanduser().absolute())
    scheme = source.split("://", 1)[0].lower()
    if scheme == "file":
        parsed = urlparse(source)
        return LocalSource(Path(unquote(parsed.netloc + parsed.path)).absolute())
    if scheme == "s3":
        # split by hand, not urlparse: an S3 key may hold "?" or "#", and is used as written
        bucket, _, prefix = source[len("s3://"):].partition("/")
        if not bucket:
            raise DataError(f"data source {source!r} names no bucket: use s3://BUCKET/PREFIX")
        return S3Source(bucket, prefix, s3_endpoint)
    raise DataError(f"data source {source!r}: unsupported scheme {scheme!r}; use {FORMS}")


def _is_partition_file(file_name: str) -> bool:
    return file_name.endswith(SUFFIX) and not file_name.startswith((".", "_"))


def _check_name(name: str, uri: str) -> None:
    """Only a name `names()` could list is read: no path separators, nothing hidden."""
    if not name or "/" in name or os.sep in name or name.startswith((".", "_")):
        raise DataError(f"{name!r} is not a partition name in {uri}: a partition is NAME{SUFFIX} "
                        "directly in the source, NAME not starting with '.' or '_'")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _s3_reason(exc: Exception) -> str:
    """The registry's message, but for a connection failure the transport's own: the registry's names
    the key it was after, which for a listing of the bucket root is empty ("cannot reach S3 for : …")."""
    from botocore.exceptions import ClientError

    cause = exc.__cause__
    if cause is not None and not isinstance(cause, ClientError):
        return f"cannot reach S3: {_one_line(cause)}"
    return _one_line(exc)


class _Closing:
    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalSource(_Closing):
    """A directory on a local or mounted file system; holds nothing open, so `close` does nothing."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.uri = f"file://{directory}"

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            raise DataError(f"data source {self.directory} is not a directory")
        try:
            return sorted(p.name[: -len(SUFFIX)] for p in self.directory.iterdir()
                          if _is_partition_file(p.name) and p.is_file())
        except OSError as exc:
            raise DataError(f"data source {self.directory}: cannot list it: {exc.strerror}") from None

    def read(self, name: str) -> pa.Buffer:
        """The file's bytes in memory Arrow owns, never in a Python object: an Arrow worker thread may
        drop the last reference to what it read after the call returns, and releasing Python memory
        needs the GIL, which a thread cannot take once the interpreter is exiting (it is ended by
        pthread_exit inside Arrow's C++ destructor: "terminate called without an active exception",
        exit 134 instead of 2)."""
        import pyarrow as pa

        _check_name(name, self.uri)
        path = self.directory / f"{name}{SUFFIX}"
        try:
            with open(path, "rb") as fh:
                buf = pa.allocate_buffer(os.fstat(fh.fileno()).st_size)
                got = fh.readinto(buf)
        except FileNotFoundError:
            raise DataError(f"partition {name} not found in {self.directory}") from None
        except OSError as exc:
            raise DataError(f"partition {name}: cannot read {path}: {exc.strerror}") from None
        if got != buf.size:
            raise DataError(f"partition {name}: {path} changed size while it was read")
        return buf


class S3Source(_Closing):
    """Objects `<prefix>/<name>.parquet` in a bucket. Blocking: call it from plain code (not from inside
    a running event loop); calls from several threads take turns on the source's own loop."""

    page_size = 1000  # names asked of each listing call; the listing goes on until it is complete

    def __init__(self, bucket: str, prefix: str, endpoint: str | None) -> None:
        from inferloop.registry.store.s3 import S3Store  # aiobotocore: only for an s3:// source

        self._store: S3Store = S3Store(bucket, prefix, endpoint_url=endpoint)
        self.uri = self._store.uri
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError(f"partition source {self.uri} is closed")
            return self._loop.run_until_complete(coro)

    def _where(self) -> str:
        return f"S3 endpoint {self._store.endpoint_url or 'AWS'}"

    async def _list(self) -> list[str]:
        # `list_children` pages through S3 itself but stops at `limit`: go on after the last name
        # until a call comes back short. A name that is both an object and a "directory" appears twice.
        found: set[str] = set()
        after = ""
        while True:
            page = await self._store.list_children("", start_after=after, limit=self.page_size)
            found.update(page)
            if len(page) < self.page_size:
                return sorted(found)
            after = page[-1]

    def names(self) -> list[str]:
        """Limitation: a listing with a delimiter returns "directories" without their slash, so one
        named `x.parquet/` is listed as partition `x`, and reading it finds no such partition."""
        from inferloop.registry.errors import RegistryError

        try:
            children = self._run(self._list())
        except RegistryError as exc:
            raise DataError(f"data source {self.uri}: cannot list partitions: {_s3_reason(exc)} "
                            f"({self._where()})") from None
        return sorted(n[: -len(SUFFIX)] for n in children if _is_partition_file(n))

    def read(self, name: str) -> pa.Buffer:
        """The object's bytes, copied once into memory Arrow owns: a Python `bytes` behind the buffer
        (`pa.py_buffer`) would bring back the exit-time crash `LocalSource.read` explains."""
        import pyarrow as pa

        from inferloop.registry.errors import NotFound, RegistryError

        _check_name(name, self.uri)
        key = f"{name}{SUFFIX}"
        try:
            data = self._run(self._store.get(key)).data
        except NotFound:
            raise DataError(f"partition {name} not found in {self.uri}") from None
        except RegistryError as exc:
            raise DataError(f"partition {name}: cannot read {self.uri}/{key}: {_s3_reason(exc)} "
                            f"({self._where()})") from None
        buf = pa.allocate_buffer(len(data))
        memoryview(buf).cast("B")[:] = data  # Arrow's view is signed bytes: cast to match `bytes`
        return buf

    def close(self) -> None:
        """Release the S3 client and the loop; safe to call twice. Never raises: it runs in `__exit__`,
        where an error of its own would hide the one that ended the block."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop = self._loop
            try:
                # the resolver's threads live in the loop's default executor: join them too
                for closing in (self._store.close, loop.shutdown_asyncgens, loop.shutdown_default_executor):
                    try:
                        loop.run_until_complete(closing())
                    except Exception:  # noqa: BLE001 - see the docstring
                        pass
            finally:
                loop.close()
