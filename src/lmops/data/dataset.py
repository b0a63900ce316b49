"""Reading a dataset/ directory (the build stage's output) — the contract between build and tokenize.

Layout: ``<split>-NNNNN.jsonl`` shards (split in train, val, test, calibration), one JSON object a
line: ``{"id": <hex digest of the normalized text>, "text": ..., "source": "<file>[:line]"}``;
``manifest.json`` lists the shards per split under ``counts.splits.<split>.shards``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from lmops.manifest import Manifest, ManifestError, verify

SPLITS = ("train", "val", "test", "calibration")
# How much of a shard the JSON reader parses at once; a longer document goes to the line reader.
TEXT_BLOCK_BYTES = 1 << 20


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
        yield from _shard_records(root / shard)


def _shard_records(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: not JSON ({e})") from None


def iter_texts(dataset_dir: str | Path, split: str, manifest: Manifest | None = None, *,
               block_bytes: int = TEXT_BLOCK_BYTES) -> Iterator[str]:
    """The texts of one split, in shard order (the same strings as ``rec["text"]`` of ``iter_records``).

    pyarrow's JSON reader parses only the ``text`` field, in C++ with the GIL released: about a third
    of json.loads' CPU time per line, measured, which the tokenize stage spends beside the encoder.
    Whatever it refuses (an empty shard, a document longer than ``block_bytes``, a record whose text
    is missing or not a string) is read from that record on by the line reader, which also names
    the file and line of a real error.
    """
    root = Path(dataset_dir)
    m = manifest or open_dataset(root)
    for shard in split_shards(m, split):
        yield from _shard_texts(root / shard, block_bytes)


def _shard_texts(path: Path, block_bytes: int) -> Iterator[str]:
    import pyarrow as pa  # imported here: 0.2 s, paid only by readers of texts
    import pyarrow.json as pj

    done = 0  # texts already yielded from this shard
    options = pj.ParseOptions(explicit_schema=pa.schema([("text", pa.string())]), unexpected_field_behavior="ignore")
    try:
        with pj.open_json(path, read_options=pj.ReadOptions(block_size=block_bytes), parse_options=options) as reader:
            for batch in reader:
                texts = batch.column(0)
                if texts.null_count:  # a record without text: the line reader raises on it
                    break
                yield from texts.to_pylist()
                done += len(texts)
            else:
                return
    except pa.ArrowInvalid:
        pass
    yield from itertools.islice((rec["text"] for rec in _shard_records(path)), done, None)
