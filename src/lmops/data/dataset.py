"""Reading a dataset/ directory (the build stage's output) — the contract between build and tokenize.

Layout: ``<split>-NNNNN.jsonl`` shards (split in train, val, test, calibration), one JSON object a
line: ``{"id": <hex digest of the normalized text>, "text": ..., "source": "<file>[:line]"}``;
``manifest.json`` lists the shards per split under ``counts.splits.<split>.shards``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lmops.manifest import Manifest, ManifestError, verify

SPLITS = ("train", "val", "test", "calibration")


def split_shards(manifest: Manifest, split: str) -> list[str]:
    return list(manifest.counts.get("splits", {}).get(split, {}).get("shards", []))


def open_dataset(dataset_dir: str | Path) -> Manifest:
    """Verify every shard of a dataset directory against its manifest and return the manifest."""
    return verify(dataset_dir, stage="build")


def iter_records(dataset_dir: str | Path, split: str, manifest: Manifest | None = None) -> Iterator[dict]:
    """The records of one split, in shard order. Call open_dataset first (or pass its manifest)."""
    root = Path(dataset_dir)
    m = manifest or open_dataset(root)
    for shard in split_shards(m, split):
        with open(root / shard, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ManifestError(f"{root / shard}:{lineno}: not JSON ({e})") from None


def iter_texts(dataset_dir: str | Path, split: str, manifest: Manifest | None = None) -> Iterator[str]:
    for rec in iter_records(dataset_dir, split, manifest):
        yield rec["text"]
