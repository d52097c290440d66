"""Object stores behind the registry: `file://PATH` and `s3://BUCKET/PREFIX`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from inferloop.registry.errors import InvalidRegistryURI
from inferloop.registry.store.base import ObjectStore, StoredObject
from inferloop.registry.store.file import FileStore
from inferloop.registry.store.s3 import S3Store

DEFAULT_REGISTRY_URI = "file://.inferloop/registry"

__all__ = ["DEFAULT_REGISTRY_URI", "FileStore", "ObjectStore", "S3Store", "StoredObject", "open_store"]


def open_store(uri: str, *, s3_endpoint: str | None = None) -> ObjectStore:
    """Open the store a registry URI names; a bare path means `file://`."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidRegistryURI("empty registry URI: use file://PATH or s3://BUCKET/PREFIX")
    if "://" not in uri:
        return FileStore(Path(uri))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
        if not path:
            raise InvalidRegistryURI(f"registry URI {uri!r} names no directory")
        return FileStore(Path(path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidRegistryURI(f"registry URI {uri!r} names no bucket: use s3://BUCKET/PREFIX")
        return S3Store(parsed.netloc, parsed.path, endpoint_url=s3_endpoint)
    raise InvalidRegistryURI(
        f"unknown registry URI scheme {parsed.scheme!r} in {uri!r}: use file://PATH or s3://BUCKET/PREFIX"
    )
