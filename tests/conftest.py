"""Shared fixtures: a real moto S3 server on a loopback ephemeral port, and a registry URI
parametrised over both backends so every registry test runs on `file://` and `s3://`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

# botocore needs credentials even for moto; never let a test reach a real AWS account.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def create_bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or f"reg-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    yield server
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL", None)


@pytest.fixture(params=["file", "s3"])
def registry_uri(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty registry on each backend."""
    if request.param == "file":
        return f"file://{tmp_path / 'registry'}"
    server: MotoServer = request.getfixturevalue("moto_server")
    return f"s3://{server.create_bucket()}/inferloop"


class Tamper:
    """Writes straight into a registry's storage, bypassing the registry, to simulate corruption."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request

    def _split(self, uri: str) -> tuple[str, str]:
        rest = uri[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        return bucket, (prefix.strip("/") + "/" if prefix.strip("/") else "")

    def _s3(self):
        import boto3

        server: MotoServer = self.request.getfixturevalue("moto_server")
        return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")

    def overwrite(self, uri: str, key: str, data: bytes) -> None:
        if uri.startswith("file://"):
            path = os.path.join(uri[len("file://"):], key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
        else:
            bucket, prefix = self._split(uri)
            self._s3().put_object(Bucket=bucket, Key=prefix + key, Body=data)

    def remove(self, uri: str, key: str) -> None:
        if uri.startswith("file://"):
            os.remove(os.path.join(uri[len("file://"):], key))
        else:
            bucket, prefix = self._split(uri)
            self._s3().delete_object(Bucket=bucket, Key=prefix + key)


@pytest.fixture
def tamper(request: pytest.FixtureRequest) -> Tamper:
    return Tamper(request)
