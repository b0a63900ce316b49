"""Stage 5, compression: int8 (quantize.py), pruned (prune.py) and distilled student (distill.py) variants of
a trained checkpoint, each scored by ``lmops.evaluate`` and gated against the fp32 model (stage.py)."""

from __future__ import annotations

from lmops.errors import LmopsError


class CompressError(LmopsError, RuntimeError):
    """A checkpoint that cannot be compressed or a compressed directory that cannot be read; names the path."""


VARIANTS = ("int8", "pruned", "student")
