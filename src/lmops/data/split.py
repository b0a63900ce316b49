"""Deterministic train/val/test(/calibration) assignment and size-capped jsonl shards.

A document's split is decided by a hash of (salt, normalized text) alone, so it does not move when
files are reordered, renamed, merged or split, and re-running with more data keeps old assignments.
Shards hold the records of one split sorted by id, so their bytes depend only on the kept texts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

from lmops.config import SplitConfig
from lmops.data.dedup import Doc

_SCALE = float(1 << 64)
WRITE_BUFFER = 1 << 20  # bytes a shard file buffers before writing (records are ~KB each)


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


class ShardWriter:
    """``<split>-NNNNN.jsonl`` shards of at most ``max_bytes``, written as records arrive (in id order); a single
    larger record gets a shard of its own rather than being cut. Both engines write through it.

    Each record goes straight to the open shard file: the writer holds no shard in memory (with three splits
    and 64 MB shards, buffering them was up to 192 MB of the ray driver's memory)."""

    def __init__(self, out: Path, split: str, max_bytes: int):
        self.out, self.split, self.max_bytes = out, split, max_bytes
        self.shards: list[str] = []
        self.docs = self.chars = self.bytes = 0
        self._file: BinaryIO | None = None
        self._size = 0

    def add(self, line: bytes, chars: int) -> None:
        if self._file is not None and self._size + len(line) > self.max_bytes:
            self._end_shard()
        if self._file is None:
            name = f"{self.split}-{len(self.shards):05d}.jsonl"
            self._file = open(self.out / name, "wb", buffering=WRITE_BUFFER)
            self.shards.append(name)
        self._file.write(line)
        self._size += len(line)
        self.bytes += len(line)
        self.chars += chars
        self.docs += 1

    def _end_shard(self) -> None:
        self._file.close()
        self._file, self._size = None, 0

    def close(self) -> dict[str, Any]:
        """Close the last shard; the split's counts: docs, chars, bytes, shards."""
        if self._file is not None:
            self._end_shard()
        return {"docs": self.docs, "chars": self.chars, "bytes": self.bytes, "shards": self.shards}


def write_shards(out: Path, split: str, docs: list[Doc], max_bytes: int) -> dict[str, Any]:
    """Write one split's documents, sorted by id, as shards. Returns the split's counts."""
    writer = ShardWriter(out, split, max_bytes)
    for doc in sorted(docs, key=lambda d: d.id):
        writer.add(record_line(doc), len(doc.text))
    return writer.close()
