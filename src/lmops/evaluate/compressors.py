"""General-purpose compressors on the text a model is scored on: the line a language model must beat.

A model's bits per byte is its code length for the test text; ``gzip -9`` and ``xz -9e`` (LZMA at its
strongest preset) are what anyone can get without a model. The evaluate stage reports both for the
same split, decoded back to its bytes, so the comparison in the run's summary is measured, not quoted.
"""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

from lmops.evaluate.token_bytes import ids_to_bytes, token_byte_strings
from lmops.data.tokens import load_split, open_tokens

COMPRESSORS = {
    "gzip_9": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "xz_9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
}
"""name -> compress function; the names are the metric keys' prefixes (``gzip_9_bits_per_byte``)."""


def bits_per_byte(data: bytes) -> dict[str, float]:
    """Each compressor's output size in bits per input byte (empty input: nothing to report)."""
    if not data:
        return {}
    return {f"{name}_bits_per_byte": 8 * len(compress(data)) / len(data) for name, compress in COMPRESSORS.items()}


def split_bits_per_byte(tokens_dir: str | Path, split: str = "test") -> dict[str, float]:
    """The compressors on a split's text; empty when the tokenizer is not byte-level (no exact bytes)."""
    info = open_tokens(tokens_dir, splits=(split,))
    strings = token_byte_strings(info.tokenizer_dir)
    if strings is None:
        return {}
    return bits_per_byte(ids_to_bytes(load_split(info, split), strings))
