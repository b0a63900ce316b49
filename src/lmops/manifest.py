"""Stage output directories: ``manifest.json``, content-addressed caching, verification.

A stage writes its files into a fresh directory and, last of all, ``manifest.json``: the stage
name, its config section, the digests of its inputs, the sha256 of every file it wrote, counts
and metrics. The directory then replaces the output path in one rename, so a crash never
leaves a half-written output that looks finished.

The cache key of a stage is sha256(code digest, config section, input digests). Paths are not
part of it: a renamed input with the same content reuses the output, a changed byte re-runs it.
Finished outputs are also kept under ``<cache_dir>/<stage>/<key>/`` (hard links where possible), so
a new output path (a new kfp run, another --out) with the same key is served from the cache.
"""

from __future__ import annotations

from lmops.errors import LmopsError

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmops import __version__
from lmops.config import sha256_json

MANIFEST = "manifest.json"
CHUNK = 1 << 20


class ManifestError(LmopsError, RuntimeError):
    """A stage output is missing, incomplete, or its files do not match their recorded digests."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# Verification hashes each file once per process. A stage reads its inputs in several places (its cache key,
# each variant's evaluation, a recovery fine-tune, ...), each verifying what it relies on; on a 100 GB token
# set one pass takes minutes. A file's hash is remembered under its identity and change stamps: device, inode,
# size, mtime and ctime. Any write changes ctime (which no one can set back, unlike mtime), so a changed file
# is hashed again and a mismatch still fails.
_hashes: dict[tuple[int, ...], str] = {}
_hashed_bytes = 0


def _stamp(path: str | Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read once per process while the file is unchanged (see ``_hashes``)."""
    global _hashed_bytes
    before = _stamp(path)
    digest = _hashes.get(before)
    if digest is None:
        digest = sha256_file(path)
        _hashed_bytes += before[2]
        if _stamp(path) == before:  # not remembered when the file changed while it was read
            _hashes[before] = digest
    return digest


def hashed_bytes() -> int:
    """Bytes this process has hashed through ``file_sha256`` (what verification cost it)."""
    return _hashed_bytes


def remembered_hashes() -> list[list]:
    """This process's file hashes, for a child process on the same machine (a Ray Train worker) to
    ``remember``: the files the driver verified are then not read again there."""
    return [[*stamp, digest] for stamp, digest in _hashes.items()]


def remember(hashes: list[list]) -> None:
    """Take the hashes ``remembered_hashes`` gave. On another machine the device and inode differ: its
    files are hashed as usual."""
    for *stamp, digest in hashes:
        _hashes[tuple(stamp)] = digest


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under root except the manifest, keyed by relative path."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            table[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return table


def content_digest(files: dict[str, dict[str, Any]]) -> str:
    """One digest for a directory's content: what downstream stages key their caches on."""
    return sha256_json({rel: meta["sha256"] for rel, meta in files.items()})


def code_digest(*module_files: str | Path) -> str:
    """Digest of the source files that implement a stage: editing the code invalidates its cache."""
    h = hashlib.sha256(__version__.encode())
    for f in sorted(str(m) for m in module_files):
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def stage_key(stage: str, code: str, config: dict, inputs: dict[str, str]) -> str:
    """The cache key: code + config section + input content digests (never paths)."""
    return sha256_json({"stage": stage, "code": code, "config": config, "inputs": inputs})


@dataclass
class Manifest:
    stage: str
    key: str
    config: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    files: dict[str, dict[str, Any]]
    counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lmops_version: str = __version__
    created_at: float = 0.0
    seconds: float = 0.0

    @property
    def digest(self) -> str:
        return content_digest(self.files)

    def to_json(self) -> str:
        d = asdict(self)
        d["digest"] = self.digest
        return json.dumps(d, indent=2, sort_keys=True) + "\n"


def read_manifest(root: str | Path, stage: str | None = None) -> Manifest:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ManifestError(f"{root}: stage output directory not found")
    if not path.is_file():
        raise ManifestError(f"{root}: no {MANIFEST} — not a finished stage output (interrupted, or the wrong path?)")
    try:
        d = json.loads(path.read_text())
        d.pop("digest", None)
        m = Manifest(**d)
    except (json.JSONDecodeError, TypeError) as e:
        raise ManifestError(f"{path}: unreadable manifest: {e}") from None
    if stage is not None and m.stage != stage:
        raise ManifestError(f"{root}: expected the output of stage {stage!r}, found {m.stage!r}")
    return m


def verify(root: str | Path, stage: str | None = None, only: list[str] | None = None) -> Manifest:
    """Read the manifest and check the files a reader relies on (all, or ``only``) against it."""
    root = Path(root)
    m = read_manifest(root, stage)
    for rel in only if only is not None else list(m.files):
        meta = m.files.get(rel)
        if meta is None:
            raise ManifestError(f"{root}: {rel} is not listed in {MANIFEST}")
        path = root / rel
        if not path.is_file():
            raise ManifestError(f"{path}: listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise ManifestError(
                f"{path}: size {size} differs from the {meta['bytes']} bytes recorded in {MANIFEST}"
                f" — the file was changed after stage {m.stage!r} wrote it; re-run the stage"
            )
        actual = file_sha256(path)
        if actual != meta["sha256"]:
            raise ManifestError(
                f"{path}: sha256 {actual[:12]}… differs from {meta['sha256'][:12]}… recorded in {MANIFEST}"
                f" — the file was changed after stage {m.stage!r} wrote it; re-run the stage"
            )
    return m


def input_digest(root: str | Path, stage: str | None = None) -> str:
    """The content digest a downstream stage keys on: a stage output's verified manifest digest, or,
    for a plain directory (a model from elsewhere), the digest of its files."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return verify(root, stage).digest
    if not root.is_dir():
        raise ManifestError(f"{root}: directory not found")
    return content_digest(file_table(root))


@dataclass
class StageResult:
    manifest: Manifest
    path: Path
    cached: bool


def run_stage(
    stage: str,
    out_dir: str | Path,
    *,
    code: str,
    config: dict[str, Any],
    inputs: dict[str, dict[str, Any]],
    produce: Callable[[Path], dict[str, Any]],
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> StageResult:
    """Run ``produce(tmp_dir)`` unless an output with the same key exists; publish atomically.

    ``inputs`` maps a name to at least ``{"digest": ...}`` (paths may be added for lineage);
    ``produce`` writes files into the directory it is given and returns
    ``{"counts": {...}, "metrics": {...}}``.
    """
    out = Path(out_dir)
    key = stage_key(stage, code, config, {k: v["digest"] for k, v in inputs.items()})

    hit = _cached_output(out, stage, key)
    if hit is not None:
        log(f"[{stage}] cached: {out} (key {key[:12]})")
        return StageResult(hit, out, True)
    cache_entry = Path(cache_dir) / stage / key if cache_dir else None
    if cache_entry is not None and _cached_output(cache_entry, stage, key) is not None:
        publish_dir(link_copy(cache_entry, _tmp_beside(out)), out)
        log(f"[{stage}] cached: {out} (from {cache_entry})")
        return StageResult(read_manifest(out), out, True)

    tmp = _tmp_beside(out)
    tmp.mkdir(parents=True)
    started = time.time()
    try:
        produced = produce(tmp) or {}
        manifest = write_manifest(tmp, stage=stage, key=key, config=config, inputs=inputs,
                                  counts=produced.get("counts", {}), metrics=produced.get("metrics", {}),
                                  started=started)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out)
    if cache_entry is not None and not cache_entry.exists():
        publish_dir(link_copy(out, _tmp_beside(cache_entry)), cache_entry)
    log(f"[{stage}] wrote {out} in {manifest.seconds:.1f}s (key {key[:12]})")
    return StageResult(manifest, out, False)


def write_manifest(root: Path, *, stage: str, key: str, config: dict[str, Any], inputs: dict[str, dict[str, Any]],
                   counts: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   started: float | None = None) -> Manifest:
    """Seal ``root``: record every file in it (written last, so a manifest means a finished directory)."""
    now = time.time()
    manifest = Manifest(stage=stage, key=key, config=config, inputs=inputs, files=file_table(root),
                        counts=counts or {}, metrics=metrics or {}, created_at=started or now,
                        seconds=round(now - (started or now), 3))
    (root / MANIFEST).write_text(manifest.to_json())
    return manifest


def _cached_output(root: Path, stage: str, key: str) -> Manifest | None:
    if not (root / MANIFEST).is_file():
        return None
    try:
        m = read_manifest(root, stage)
        if m.key != key:
            return None
        return verify(root, stage)
    except ManifestError:
        return None  # edited or corrupt: recompute rather than trust it


def _tmp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"


def link_copy(src: Path, dst: Path) -> Path:
    """Copy a directory tree using hard links where the filesystem allows (outputs are immutable)."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link_or_copy)
    return dst


def publish_dir(tmp: Path, out: Path) -> None:
    """Replace ``out`` with ``tmp``: rename the old one aside first, so a crash loses nothing finished."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
