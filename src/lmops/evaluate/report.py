"""How evaluation figures read in log lines and in a run's summary (the evaluate and compress stages' logs,
the pipeline's closing table). Text only: no model, no torch."""

from __future__ import annotations

from typing import Any


def figure(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or "-" where there is none."""
    return "-" if x is None else f"{x:.{digits}f}"


def bits_per_byte_text(bpb: float | None) -> str:
    """``1.234 bits/byte``; without a figure, why (lmops.evaluate.token_bytes: only byte-level tokenizers)."""
    return "bits/byte n/a (tokenizer not byte-level)" if bpb is None else f"{bpb:.3f} bits/byte"


def scored_text(scored: int | None, total: int | None) -> str:
    """How much of the test split evaluation scored (all of it unless evaluate.max_blocks caps it)."""
    return "tokens scored: -" if scored is None or total is None else f"{scored:,} of {total:,} test tokens scored"


def compressors_text(metrics: dict[str, Any]) -> str:
    """The model against gzip -9 and xz -9e on the same test text (lmops.evaluate.compressors)."""
    return (f"same test text: model {figure(metrics.get('bits_per_byte'))}, "
            f"gzip -9 {figure(metrics.get('gzip_9_bits_per_byte'))}, "
            f"xz -9e {figure(metrics.get('xz_9e_bits_per_byte'))} bits/byte")
