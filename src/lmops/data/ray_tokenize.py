"""``tokenize.engine: ray``: encoding and packing spread over Ray Data workers, the same ``.bin`` bytes.

The dataset's shards are cut into line-aligned byte ranges of about ``ray.block_mb``; each task reads
its range, encodes it in ``batch_size`` batches with the tokenizer (sent as its tokenizer.json text) and
returns the packed bytes. Ray Data keeps the tasks' order (preserve_order), so the driver appends each
range to its split's file in dataset order and holds only the ranges in flight. The workers read the
shards by path, or with ``shards_uri`` (an s3:// copy of the dataset directory: a RayJob's pods share no
disk) by ranged GETs from S3; the ranges are cut on the driver's local copy, which was verified against the
manifest.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lmops import storage
from lmops.config import TokenizeConfig
from lmops.data import engine
from lmops.data.dataset import split_shards
from lmops.data.progress import phase_line
from lmops.data.tokenizer import TOKENIZER_JSON, batched, packing_encoder_from_json
from lmops.data.tokens import STRUCT_ITEM, pack_ids
from lmops.manifest import Manifest, ManifestError

STAGE = "tokenize"


def line_ranges(path: Path, block_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges covering the file, each ending after a newline (or at the end of the file)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = 0
        while start < size:
            f.seek(min(size, start + block_bytes))
            f.readline()  # to the end of the line the cut falls in
            end = min(size, f.tell())
            yield start, end
            start = end


def encode_splits(tok_dir: Path, dataset_dir: Path, dataset: Manifest, splits: list[str], out: Path,
                  dtype: str, eos_id: int, cfg: TokenizeConfig, log: Callable[[str], None],
                  shards_uri: str | None = None) -> list[tuple[int, int]]:
    """Write ``<split>.bin`` for each split on Ray Data; (documents, tokens) per split, as tokenize.encode_splits."""
    import ray.data

    block = max(1, int(cfg.ray.block_mb * 1e6))
    def where(shard: str) -> str:
        return f"{shards_uri.rstrip('/')}/{shard}" if shards_uri else str(dataset_dir / shard)

    items = [{"part": i, "path": where(shard), "start": s, "end": e}
             for i, split in enumerate(splits) for shard in split_shards(dataset, split)
             for s, e in line_ranges(dataset_dir / shard, block)]
    counts = [[0, 0] for _ in splits]
    total_bytes = sum(it["end"] - it["start"] for it in items)
    started = time.perf_counter()
    with engine.data_context(cfg.ray), ExitStack() as stack:
        files = [stack.enter_context(open(out / f"{split}.bin", "wb")) for split in splits]
        if items:
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _encode_ranges, batch_size=1, batch_format="pyarrow",
                fn_kwargs={"tokenizer_json": (tok_dir / TOKENIZER_JSON).read_text(encoding="utf-8"),
                           "item": STRUCT_ITEM[dtype], "eos_id": eos_id, "batch_size": cfg.batch_size})
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for part, packed, docs in zip(batch["part"].to_pylist(), batch["packed"].to_pylist(),
                                              batch["docs"].to_pylist()):
                    files[part].write(packed)
                    counts[part][0] += docs
                    counts[part][1] += len(packed) // struct.calcsize(STRUCT_ITEM[dtype])
    phase_line(log, STAGE, "ray", "encode", sum(c[0] for c in counts), total_bytes, time.perf_counter() - started,
               f"{len(items)} blocks, {sum(c[1] for c in counts)} tokens")
    return [(d, t) for d, t in counts]


_ENCODERS: dict[str, Any] = {}  # per worker process: a tokenizer is parsed once, not once per task


def _encode_ranges(batch, *, tokenizer_json: str, item: str, eos_id: int, batch_size: int) -> Any:
    import pyarrow as pa

    encoder = _ENCODERS.get(tokenizer_json)
    if encoder is None:
        _ENCODERS.clear()
        encoder = _ENCODERS[tokenizer_json] = packing_encoder_from_json(tokenizer_json)
    encode = getattr(encoder, "encode_batch_fast", encoder.encode_batch)
    parts, packed_all, docs_all = [], [], []
    for part, path, start, end in zip(batch["part"].to_pylist(), batch["path"].to_pylist(),
                                      batch["start"].to_pylist(), batch["end"].to_pylist()):
        data = storage.read_range(path, start, end)
        texts = _texts(data, path, start)
        packed = b"".join(pack_ids(encode(b, add_special_tokens=False), eos_id, item) for b in batched(texts, batch_size))
        parts.append(part)
        packed_all.append(packed)
        docs_all.append(len(texts))
    return pa.table({"part": pa.array(parts, pa.int32()), "packed": pa.array(packed_all, pa.large_binary()),
                     "docs": pa.array(docs_all, pa.int64())})


def _texts(data: bytes, path: str, start: int) -> list[str]:
    """The ``text`` of every record in a range of a shard; a broken record is named by its byte offset."""
    texts = []
    offset = start
    for line in data.split(b"\n"):
        if not line:  # after the last record's newline
            offset += 1
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ManifestError(f"{path}: byte {offset}: not a dataset record ({e})") from None
        offset += len(line) + 1
    return texts
