"""Reading a tokens/ directory (the tokenize stage's output) — the contract between tokenize and train.

Layout: ``tokenizer/`` (loads with ``transformers.AutoTokenizer.from_pretrained``), one packed file
per split (``train.bin``, ``val.bin``, ``test.bin``, optionally ``calibration.bin``): the token ids of
every document of the split, each document followed by EOS, as little-endian ``uint16`` when the
vocabulary fits, else ``uint32``. ``manifest.json`` ``counts``: ``vocab_size``, ``dtype``, ``eos_id``,
``pad_id``, ``tokens`` and ``documents`` per split.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmops.manifest import Manifest, ManifestError, read_manifest, verify


@dataclass(frozen=True)
class TokenInfo:
    root: Path
    manifest: Manifest
    vocab_size: int
    dtype: str
    eos_id: int
    pad_id: int
    tokens: dict[str, int]

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"


def open_tokens(root: str | Path, splits: tuple[str, ...] = ("train", "val", "test")) -> TokenInfo:
    """Verify the tokenizer and the named splits against the manifest; clear error if anything is off."""
    root = Path(root)
    m = read_manifest(root, stage="tokenize")
    c = m.counts
    missing = [s for s in splits if f"{s}.bin" not in m.files]
    if missing:
        raise ManifestError(f"{root}: token shards missing for split(s) {missing} (have {sorted(c.get('tokens', {}))})")
    verify(root, "tokenize", only=[f"{s}.bin" for s in splits] + [f for f in m.files if f.startswith("tokenizer/")])
    return TokenInfo(root, m, int(c["vocab_size"]), c["dtype"], int(c["eos_id"]), int(c["pad_id"]), dict(c["tokens"]))


def load_split(info: TokenInfo, split: str) -> np.memmap:
    """The packed ids of one split, memory-mapped read-only."""
    path = info.root / f"{split}.bin"
    if not path.is_file():
        raise ManifestError(f"{path}: no token shard for split {split!r}")
    dtype = np.dtype(info.dtype).newbyteorder("<")
    # an empty split (a tiny dataset) is a valid 0-byte file, and mmap refuses empty files
    data = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype=dtype)
    if len(data) != info.tokens.get(split):
        raise ManifestError(f"{path}: {len(data)} tokens, manifest says {info.tokens.get(split)}")
    return data


# ---------------------------------------------------------------- writing (the tokenize stage, both engines)
# struct codes of the token dtypes (standard sizes with '<': 2 and 4 bytes)
STRUCT_ITEM = {"uint16": "H", "uint32": "I"}


def pack_ids(encodings: list, eos_id: int, item: str) -> bytes:
    """One batch's ids, each document followed by EOS, little-endian, one ``item`` (struct code) each.

    struct.pack of one flat list was the cheapest way measured (3x np.array of the list; per-document
    arrays and np.fromiter over a chain were slower), and it runs on the thread the encoder waits on.
    An id that does not fit ``item`` raises struct.error, never wraps around.
    """
    flat: list[int] = []
    for enc in encodings:
        flat += enc.ids
        flat.append(eos_id)
    return struct.pack(f"<{len(flat)}{item}", *flat)
