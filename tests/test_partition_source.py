"""Partition sources: the same Parquet files in a directory and under an S3 prefix (a real moto server)
list the same partitions and read byte for byte the same; every bad source is a one-line DataError."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferloop.trainer.errors import DataError
from inferloop.trainer.partition_source import S3Source, open_source

from .conftest import MotoServer

DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]


def _write_tree(root: Path) -> dict[str, bytes]:
    """Three day partitions, and beside them what is not a partition. Returns relative path → bytes."""
    root.mkdir(parents=True)
    for i, day in enumerate(DAYS):
        pq.write_table(pa.table({"x": [float(i), 2.0 * i], "y": [i, i + 1]}), root / f"{day}.parquet")
    (root / "notes.txt").write_text("not a partition")
    (root / "_dataset.json").write_text("{}")
    (root / "_tmp.parquet").write_bytes((root / f"{DAYS[0]}.parquet").read_bytes())
    (root / ".hidden.parquet").write_bytes((root / f"{DAYS[0]}.parquet").read_bytes())
    (root / "sub").mkdir()
    (root / "sub" / "x.parquet").write_bytes((root / f"{DAYS[1]}.parquet").read_bytes())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _upload(server: MotoServer, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    for rel, data in files.items():
        s3.put_object(Bucket=bucket, Key=prefix + rel, Body=data)


def _digests(source_uri: str, endpoint: str | None = None) -> tuple[str, list[str], list[str]]:
    with open_source(source_uri, endpoint) as src:
        names = src.names()
        return src.uri, names, [hashlib.sha256(src.read(n)).hexdigest() for n in names]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    return tmp_path / "days", _write_tree(tmp_path / "days")


@pytest.mark.parametrize("prefix", ["days", "days/", "nested/days", ""])
def test_the_same_files_on_disk_and_on_s3_list_and_read_the_same(
        moto_server: MotoServer, tree: tuple[Path, dict[str, bytes]], prefix: str) -> None:
    root, files = tree
    bucket = moto_server.create_bucket()
    key_prefix = prefix.rstrip("/") + "/" if prefix else ""
    _upload(moto_server, bucket, key_prefix, files)
    _upload(moto_server, bucket, "daysX/", files)  # a sibling prefix that starts alike: not listed

    local_uri, local_names, local_digests = _digests(str(root))
    s3_uri, s3_names, s3_digests = _digests(f"s3://{bucket}/{prefix}", moto_server.endpoint)

    assert local_uri == f"file://{root}"
    assert s3_uri == f"s3://{bucket}/{prefix}".rstrip("/")
    assert local_names == s3_names == DAYS  # sidecars, hidden and "_" files, sub/ left out
    expected = [hashlib.sha256(files[f"{d}.parquet"]).hexdigest() for d in DAYS]
    assert local_digests == s3_digests == expected
    with open_source(f"s3://{bucket}/{prefix}", moto_server.endpoint) as src:
        assert pq.read_table(pa.BufferReader(src.read(DAYS[2]))).column("y").to_pylist() == [2, 3]


def test_s3_endpoint_falls_back_to_aws_endpoint_url(moto_server: MotoServer,
                                                    tree: tuple[Path, dict[str, bytes]]) -> None:
    bucket = moto_server.create_bucket()
    _upload(moto_server, bucket, "d/", tree[1])
    # the moto_server fixture exports AWS_ENDPOINT_URL, as a MinIO or Ceph deployment would
    assert _digests(f"s3://{bucket}/d")[1] == DAYS


def test_s3_listing_goes_on_past_each_page(moto_server: MotoServer) -> None:
    bucket = moto_server.create_bucket()
    days = [f"2024-02-{d:02d}" for d in range(1, 8)]
    files = {f"{d}.parquet": d.encode() for d in days}
    files |= {"2024-02-03/extra.parquet": b"x", "2024-02-03.txt": b"x", "_SUCCESS": b""}
    _upload(moto_server, bucket, "p/", files)
    src = open_source(f"s3://{bucket}/p", moto_server.endpoint)
    assert isinstance(src, S3Source)
    with src:
        src.page_size = 2  # many short pages, a "directory" among the names on one of them
        assert src.names() == days
        assert [src.read(d).to_pybytes() for d in days] == [d.encode() for d in days]


def test_local_forms_give_one_canonical_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "home" / "data"
    _write_tree(root)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for form in (str(root), f"{root}/", "home/data", "~/data", f"file://{root}", f"file://{root}/"):
        with open_source(form) as src:
            assert src.uri == f"file://{root}", form
            assert src.names() == DAYS
        src.close()  # closing twice is harmless


def test_missing_bucket_is_named(moto_server: MotoServer) -> None:
    bucket = f"absent-{uuid.uuid4().hex[:8]}"
    with open_source(f"s3://{bucket}/days", moto_server.endpoint) as src:
        with pytest.raises(DataError, match=f"s3://{bucket}/days.*bucket '{bucket}' does not exist"):
            src.names()
        with pytest.raises(DataError, match=f"bucket '{bucket}' does not exist"):
            src.read(DAYS[0])


def test_unreachable_endpoint_names_the_source() -> None:
    with open_source("s3://some-bucket/days", "http://127.0.0.1:1") as src:
        with pytest.raises(DataError, match="^data source s3://some-bucket/days: cannot list partitions: "
                                            r"cannot reach S3: .*\(S3 endpoint http://127.0.0.1:1\)$"):
            src.names()


def test_missing_partition(moto_server: MotoServer, tree: tuple[Path, dict[str, bytes]]) -> None:
    root, files = tree
    bucket = moto_server.create_bucket()
    _upload(moto_server, bucket, "days/", files)
    for uri, where in ((str(root), str(root)), (f"s3://{bucket}/days", f"s3://{bucket}/days")):
        with open_source(uri, moto_server.endpoint) as src:
            with pytest.raises(DataError, match=f"^partition 2030-01-01 not found in {where}$"):
                src.read("2030-01-01")
            for not_a_name in ("sub/x", "../days/2024-01-01", "_tmp", ""):
                with pytest.raises(DataError, match="is not a partition name"):
                    src.read(not_a_name)


@pytest.mark.parametrize("source", ["gs://bucket/days", "http://example.com/days", "s3:///days", "", " "])
def test_unsupported_sources_are_refused(source: str) -> None:
    with pytest.raises(DataError, match=r"s3://BUCKET/PREFIX") as err:
        open_source(source)
    if source.strip():
        assert repr(source) in str(err.value)


def test_missing_local_directory(tmp_path: Path) -> None:
    with open_source(str(tmp_path / "absent")) as src:
        with pytest.raises(DataError, match=f"^data source {tmp_path / 'absent'} is not a directory$"):
            src.names()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        open_source(f"file://{tmp_path / 'file'}").names()


def test_a_closed_s3_source_refuses_calls(moto_server: MotoServer) -> None:
    src = open_source(f"s3://{moto_server.create_bucket()}/d", moto_server.endpoint)
    assert src.names() == []
    src.close()
    src.close()
    with pytest.raises(RuntimeError, match="closed"):
        src.names()
