"""Registry errors. Domain errors carry no HTTP; the gateway maps them in one place.

    RegistryError
    ├── InvalidName         a model name, stage or version that cannot be a storage key
    ├── InvalidRegistryURI  a URI we cannot open (unknown scheme, missing bucket name)
    ├── NotFound            a model, version, pointer or blob that does not exist
    ├── Conflict            a compare-and-swap lost (stale ETag, racing writer)
    ├── CorruptArtifact     bytes whose SHA-256 does not match their key, or an unreadable manifest
    ├── Unavailable         the backend cannot be reached (network, missing bucket, permissions)
    └── UnsupportedArtifact a model or artifact format we refuse to save or load
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error raised by the registry."""


class InvalidName(RegistryError, ValueError):
    pass


class InvalidRegistryURI(RegistryError, ValueError):
    pass


class NotFound(RegistryError, LookupError):
    pass


class Conflict(RegistryError):
    pass


class CorruptArtifact(RegistryError):
    pass


class Unavailable(RegistryError):
    pass


class UnsupportedArtifact(RegistryError, ValueError):
    pass
