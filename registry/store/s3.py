"""S3 backend through aiobotocore: AWS, MinIO, Ceph (anything that honours conditional writes).

Create-only writes use `If-None-Match: *`, replacements `If-Match: <etag>`; S3 answers 412 when the
condition fails, which becomes `Conflict`. A conditional GET that matches comes back from botocore
as a `ClientError` with status 304: that is "unchanged", not an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from inferloop.registry.errors import Conflict, NotFound, RegistryError, Unavailable
from inferloop.registry.store.base import StoredObject

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class _NotModified(Exception):
    pass


@contextlib.contextmanager
def _mapped(what: str, bucket: str) -> Iterator[None]:
    """Translate botocore failures into registry errors at the edge."""
    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "304" or status == 304:
            raise _NotModified() from None
        if code == "NoSuchBucket":
            raise Unavailable(f"bucket {bucket!r} does not exist") from None
        if code in _NOT_FOUND or status == 404:
            raise NotFound(f"{what} not found in s3://{bucket}") from None
        if code in _CONFLICT or status in (409, 412):
            raise Conflict(f"{what} changed concurrently (S3 precondition failed)") from None
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
            raise Unavailable(f"access denied to s3://{bucket} ({code})") from None
        raise Unavailable(f"S3 error on {what}: {code} {err.get('Message', '')}".strip()) from exc
    except BotoCoreError as exc:
        raise Unavailable(f"cannot reach S3 for {what}: {exc}") from exc
    except OSError as exc:
        raise Unavailable(f"cannot reach S3 for {what}: {exc}") from exc


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            stack = AsyncExitStack()
            config = AioConfig(
                connect_timeout=3, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"},
                max_pool_connections=32,
            )
            kwargs: dict[str, Any] = {"config": config}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            if not os.environ.get("AWS_DEFAULT_REGION") and not os.environ.get("AWS_REGION"):
                kwargs["region_name"] = "us-east-1"
            self._client = await stack.enter_async_context(get_session().create_client("s3", **kwargs))
            self._stack = stack
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def _get(self, key: str, etag: str | None) -> StoredObject | None:
        s3 = await self._s3()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if etag is not None:
            kwargs["IfNoneMatch"] = etag
        try:
            with _mapped(key, self.bucket):
                resp = await s3.get_object(**kwargs)
                async with resp["Body"] as body:
                    data = await body.read()
        except _NotModified:
            return None
        return StoredObject(data, resp["ETag"])

    async def get(self, key: str) -> StoredObject:
        obj = await self._get(key, None)
        assert obj is not None
        return obj

    async def get_if_changed(self, key: str, etag: str | None) -> StoredObject | None:
        return await self._get(key, etag)

    async def exists(self, key: str) -> bool:
        s3 = await self._s3()
        try:
            with _mapped(key, self.bucket):
                await s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    async def put_if_absent(self, key: str, data: bytes) -> str:
        s3 = await self._s3()
        with _mapped(key, self.bucket):
            resp = await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        etag: str = resp["ETag"]  # aiobotocore is untyped here (not followed); S3 returns a string
        return etag

    async def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        if etag is None:
            return await self.put_if_absent(key, data)
        s3 = await self._s3()
        with _mapped(key, self.bucket):
            resp = await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=etag)
        new_etag: str = resp["ETag"]
        return new_etag

    async def list_children(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        s3 = await self._s3()
        full = self._key(prefix)
        names: list[str] = []
        token: str | None = None
        while len(names) < limit:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "Delimiter": "/",
                                      "MaxKeys": min(1000, limit - len(names))}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = full + start_after
            with _mapped(prefix, self.bucket):
                resp = await s3.list_objects_v2(**kwargs)
            page = [c["Key"][len(full):] for c in resp.get("Contents", [])]
            page += [p["Prefix"][len(full):].rstrip("/") for p in resp.get("CommonPrefixes", [])]
            names.extend(n for n in sorted(page) if n and n > start_after)
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                break
        return sorted(names)[:limit]

    async def check(self, create: bool = True) -> None:
        s3 = await self._s3()  # a bucket is never created here, by readers or writers
        try:
            with _mapped("bucket", self.bucket):
                await s3.head_bucket(Bucket=self.bucket)
        except NotFound:
            raise Unavailable(f"no registry at {self.uri}: bucket {self.bucket!r} does not exist at "
                              f"{self.endpoint_url or 'AWS'}") from None
        except RegistryError:
            raise

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()
