"""One small API over local paths and ``s3://bucket/key``.

S3 settings come from the standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, which boto3 reads itself).
``LMOPS_S3_ENDPOINT_URL`` overrides the endpoint for S3-compatible stores (MinIO, moto) without
touching other AWS clients in the same process.
"""

from __future__ import annotations

from lmops.errors import LmopsError

import fnmatch
import functools
import glob as globlib
import os
from dataclasses import dataclass
from pathlib import Path

ENDPOINT_ENV = "LMOPS_S3_ENDPOINT_URL"


class StorageError(LmopsError, RuntimeError):
    """A path or object that cannot be listed, read or written; the message names it."""


@dataclass(frozen=True)
class Entry:
    """One file: where it is, its size, and for S3 objects the ETag (a content identity)."""

    uri: str
    size: int
    etag: str | None = None


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def parse_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in S3 URI (expected s3://bucket/key)")
    return bucket, key


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config as BotoConfig

    cfg = BotoConfig(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint or None, config=cfg)


def s3_client():
    return _client(os.environ.get(ENDPOINT_ENV) or None)


def _s3_call(uri: str, what: str, fn, *args, **kwargs):
    """Call boto3 and turn its many exceptions into one clear StorageError."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    try:
        return fn(*args, **kwargs)
    except EndpointConnectionError as e:
        raise StorageError(f"{uri}: cannot reach the S3 endpoint while trying to {what} (after retries): {e}") from None
    except NoCredentialsError:
        raise StorageError(f"{uri}: no S3 credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from None
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        raise StorageError(f"{uri}: S3 refused to {what}: {code}: {e.response.get('Error', {}).get('Message', e)}") from None
    except BotoCoreError as e:
        raise StorageError(f"{uri}: S3 error while trying to {what}: {e}") from None


# ---------------------------------------------------------------- listing
def list_files(source: str, *, missing_ok: bool = False) -> list[Entry]:
    """Every file a source names: a file, a directory (recursive), a glob, or an s3:// prefix/glob.

    Raises StorageError when the source matches nothing (so a typo is never an empty dataset),
    unless ``missing_ok``; an unreachable or refusing store is an error either way.
    """
    entries = _list_s3(source) if is_s3(source) else _list_local(source)
    if not entries and not missing_ok:
        raise nothing_matches(source)
    return entries


def nothing_matches(source: str) -> StorageError:
    """The error for a source that names nothing (a typo must never be an empty dataset)."""
    return StorageError(f"{source}: no such file or directory (or nothing matches)")


def _list_local(source: str) -> list[Entry]:
    path = Path(source).expanduser()
    if any(c in source for c in "*?["):
        paths = [Path(p) for p in globlib.glob(str(path), recursive=True)]
    elif path.is_dir():
        paths = [p for p in path.rglob("*")]
    elif path.exists():
        paths = [path]
    else:
        return []
    files = sorted(p for p in paths if p.is_file() and not p.name.startswith("."))
    return [Entry(str(p), p.stat().st_size) for p in files]


def _list_s3(source: str) -> list[Entry]:
    bucket, key = parse_s3(source)
    pattern = None
    if any(c in key for c in "*?["):
        prefix = key[: min(key.index(c) for c in "*?[" if c in key)]
        pattern = key
    else:
        prefix = key
    client = s3_client()
    entries = []
    paginator = client.get_paginator("list_objects_v2")
    pages = _s3_call(source, "list objects", lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix)))
    for page in pages:
        for obj in page.get("Contents", []):
            k = obj["Key"]
            if k.endswith("/"):
                continue
            if pattern is not None and not fnmatch.fnmatchcase(k, pattern):
                continue
            # a plain prefix names a "directory" only at a / boundary (s3://b/data must not match data2/)
            if pattern is None and k != prefix and prefix and not prefix.endswith("/") and not k.startswith(prefix + "/"):
                continue
            entries.append(Entry(f"s3://{bucket}/{k}", obj["Size"], obj.get("ETag", "").strip('"')))
    return sorted(entries, key=lambda e: e.uri)


# ---------------------------------------------------------------- reading and writing
def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        obj = _s3_call(uri, "read", s3_client().get_object, Bucket=bucket, Key=key)
        return obj["Body"].read()
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise StorageError(f"{uri}: no such file") from None
    except PermissionError:
        raise StorageError(f"{uri}: permission denied") from None
    except IsADirectoryError:
        raise StorageError(f"{uri}: is a directory, expected a file") from None


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes ``start`` (inclusive) to ``end`` (exclusive) of a file: one ranged GET on S3, a seek locally."""
    if end <= start:
        return b""
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        obj = _s3_call(uri, "read", s3_client().get_object, Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        return obj["Body"].read()
    try:
        with open(uri, "rb") as f:
            f.seek(start)
            return f.read(end - start)
    except FileNotFoundError:
        raise StorageError(f"{uri}: no such file") from None


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        _s3_call(uri, "write", s3_client().put_object, Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def exists(uri: str) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = parse_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"{uri}: {e}") from None
    return Path(uri).exists()


def download_dir(uri: str, dest: str | Path) -> Path:
    """Copy every object under an s3:// prefix into dest (keeping relative paths); local: no copy."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.is_dir():
            raise StorageError(f"{uri}: directory not found")
        return path
    dest = Path(dest)
    base = uri.rstrip("/") + "/"
    for entry in list_files(base):
        target = dest / entry.uri[len(base):]
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket, key = parse_s3(entry.uri)
        _s3_call(entry.uri, "download", s3_client().download_file, bucket, key, str(target))
    return dest


def upload_dir(src: str | Path, uri: str) -> None:
    """Copy a local directory tree to an s3:// prefix (or another local directory)."""
    src = Path(src)
    if not is_s3(uri):
        import shutil

        shutil.copytree(src, uri, dirs_exist_ok=True)
        return
    base = uri.rstrip("/")
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = f"{base}/{path.relative_to(src).as_posix()}"
        bucket, key = parse_s3(target)
        _s3_call(target, "upload", s3_client().upload_file, str(path), bucket, key)
