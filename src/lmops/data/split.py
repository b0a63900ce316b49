"""Deterministic train/val/test(/calibration) assignment and size-capped jsonl shards.

A document's split is decided by a hash of (salt, normalized text) alone, so it does not move when
files are reordered, renamed, merged or split, and re-running with more data keeps old assignments.
Shards hold the records of one split sorted by id, so their bytes depend only on the kept texts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lmops.config import SplitConfig
from lmops.data.dedup import Doc

_SCALE = float(1 << 64)


def split_names(cfg: SplitConfig) -> list[str]:
    """The splits a build writes: calibration only when its fraction is above zero."""
    return ["train", "val", "test"] + (["calibration"] if cfg.calibration > 0 else [])


def assign_split(text: str, cfg: SplitConfig) -> str:
    """Map the text to a point in [0, 1) and cut that interval into val | test | calibration | train."""
    h = hashlib.sha256(f"{cfg.salt}\0{text}".encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / _SCALE
    for name, fraction in (("val", cfg.val), ("test", cfg.test), ("calibration", cfg.calibration)):
        if u < fraction:
            return name
        u -= fraction
    return "train"


def record_line(doc: Doc) -> bytes:
    """One dataset record (the contract of lmops.data.dataset): {"id", "text", "source"}."""
    return (json.dumps({"id": doc.id, "text": doc.text, "source": doc.source}, ensure_ascii=False) + "\n").encode()


def write_shards(out: Path, split: str, docs: list[Doc], max_bytes: int) -> dict[str, Any]:
    """Write ``<split>-NNNNN.jsonl`` shards of at most ``max_bytes`` (a single larger record gets a shard
    of its own rather than being cut). Returns the split's counts: docs, chars, bytes, shards."""
    shards: list[str] = []
    total = chars = 0
    buf: list[bytes] = []
    size = 0

    def flush() -> None:
        name = f"{split}-{len(shards):05d}.jsonl"
        (out / name).write_bytes(b"".join(buf))
        shards.append(name)

    for doc in sorted(docs, key=lambda d: d.id):
        line = record_line(doc)
        if buf and size + len(line) > max_bytes:
            flush()
            buf, size = [], 0
        buf.append(line)
        size += len(line)
        total += len(line)
        chars += len(doc.text)
    if buf:
        flush()
    return {"docs": len(docs), "chars": chars, "bytes": total, "shards": shards}
