import pytest

from lmops import storage
from lmops.storage import StorageError


def test_local_listing_file_dir_glob(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ["d/a.txt", "d/e/b.jsonl", "d/.hidden", "c.txt"]:
        (tmp_path / name).write_text(name)
    assert [e.uri for e in storage.list_files(str(tmp_path / "d"))] == [str(tmp_path / "d/a.txt"), str(tmp_path / "d/e/b.jsonl")]
    assert [e.size for e in storage.list_files(str(tmp_path / "c.txt"))] == [5]
    assert len(storage.list_files(str(tmp_path / "**" / "*.txt"))) == 2


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(StorageError, match="no such file or directory"):
        storage.list_files(str(tmp_path / "nope"))
    with pytest.raises(StorageError, match="no such file"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_s3_roundtrip_listing_and_dirs(s3, tmp_path):
    client, bucket = s3
    storage.write_bytes(f"s3://{bucket}/data/x.txt", b"one")
    storage.write_bytes(f"s3://{bucket}/data/sub/y.jsonl", b"two!")
    storage.write_bytes(f"s3://{bucket}/data2/z.txt", b"not under data/")
    entries = storage.list_files(f"s3://{bucket}/data")
    assert [e.uri for e in entries] == [f"s3://{bucket}/data/sub/y.jsonl", f"s3://{bucket}/data/x.txt"]
    assert all(e.etag for e in entries)
    assert [e.uri for e in storage.list_files(f"s3://{bucket}/data/*.txt")] == [f"s3://{bucket}/data/x.txt"]
    assert storage.read_bytes(f"s3://{bucket}/data/x.txt") == b"one"
    assert storage.exists(f"s3://{bucket}/data/x.txt") and not storage.exists(f"s3://{bucket}/nope")
    local = storage.download_dir(f"s3://{bucket}/data", tmp_path / "dl")
    assert (local / "sub" / "y.jsonl").read_bytes() == b"two!"
    storage.upload_dir(local, f"s3://{bucket}/copy")
    assert storage.read_bytes(f"s3://{bucket}/copy/sub/y.jsonl") == b"two!"


def test_byte_ranges_read_the_same_locally_and_from_s3(s3, tmp_path):
    _, bucket = s3
    data = bytes(range(256)) * 40
    (tmp_path / "f.bin").write_bytes(data)
    storage.write_bytes(f"s3://{bucket}/f.bin", data)
    for uri in (str(tmp_path / "f.bin"), f"s3://{bucket}/f.bin"):
        for start, end in ((0, 1), (5, 300), (10_000, len(data)), (7, 7)):
            assert storage.read_range(uri, start, end) == data[start:end], (uri, start, end)
    with pytest.raises(StorageError, match="NoSuchKey"):
        storage.read_range(f"s3://{bucket}/missing", 0, 10)
    with pytest.raises(StorageError, match="no such file"):
        storage.read_range(str(tmp_path / "missing"), 0, 10)


def test_s3_errors_are_clear(s3):
    _, bucket = s3
    with pytest.raises(StorageError, match="NoSuchKey"):
        storage.read_bytes(f"s3://{bucket}/missing")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        storage.list_files("s3://no-such-bucket-xyz/prefix")
    with pytest.raises(StorageError, match="no such file or directory"):
        storage.list_files(f"s3://{bucket}/empty-prefix/")


def test_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("LMOPS_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        storage.read_bytes("s3://bucket/key")
