"""The data stages' progress: one line per finished phase with its documents/s and MB/s (the same shape for
both engines, so a pipeline log reads alike whichever ran), e.g.
``[build] ray: near_dedup 3.1s (16563 docs, 5343 docs/s, 1.55 MB/s): 53 near duplicate(s) in 44 cluster(s)``.
The phase times also go into the manifest's ``metrics.phase_seconds``."""

from __future__ import annotations

from collections.abc import Callable


def phase_line(log: Callable[[str], None], stage: str, engine: str, phase: str, docs: int, nbytes: int,
               seconds: float, note: str = "") -> None:
    rate = f"{docs / seconds:.0f} docs/s, {nbytes / 1e6 / seconds:.2f} MB/s" if seconds > 0 else "-"
    log(f"[{stage}] {engine}: {phase} {seconds:.1f}s ({docs} docs, {rate})" + (f": {note}" if note else ""))
