"""The parts of the build stage both engines share: cleaning and length filters, the "nothing kept" error,
and the counts, metrics and log lines of a finished build (so ``engine: ray`` reports exactly as ``local``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lmops.config import BuildConfig
from lmops.data import sources
from lmops.data.accounting import Tally
from lmops.data.clean import clean_text, text_id
from lmops.data.dedup import Doc
from lmops.data.sources import BuildError

STAGE = "build"


def clean_documents(raw: Iterable[sources.RawDoc], cfg: BuildConfig, tally: Tally) -> Iterator[Doc]:
    """Normalize each document and apply the length filters (drops counted and named by file[:line])."""
    for r in raw:
        text = clean_text(r.text)
        if not text:
            tally.drop_record(r.uri, "empty", r.line, "no text left after cleaning")
        elif len(text) < cfg.min_chars:
            tally.drop_record(r.uri, "too_short", r.line, f"{len(text)} characters after cleaning, "
                              f"under build.min_chars={cfg.min_chars}")
        elif len(text) > cfg.max_chars:
            tally.drop_record(r.uri, "too_long", r.line, f"{len(text)} characters after cleaning, "
                              f"over build.max_chars={cfg.max_chars}")
        else:
            yield Doc(text_id(text), text, r.source)


def nothing_kept(n_files: int, cfg: BuildConfig, tally: Tally) -> BuildError:
    examples = "; ".join(f"{p['file']}: {p['reason']}" for p in tally.report[:3])
    return BuildError(
        f"nothing kept from {n_files} file(s) in build.sources {cfg.sources}: "
        f"{tally.docs_read} document(s) read, dropped {dict(tally.docs_dropped)}, "
        f"files skipped {dict(tally.files_skipped)}, paths skipped {dict(tally.paths_skipped)}"
        + (f" (e.g. {examples})" if examples else "")
        + f" — check the sources, build.min_chars/max_chars and the formats ({sources.format_list()})"
    )


def finish(tally: Tally, kept: int, splits: dict[str, Any], phases: dict[str, float],
           log: Callable[[str], None], **extra: Any) -> dict[str, Any]:
    """The stage's counts and metrics (phase times included), and its closing log lines."""
    counts = tally.counts(kept=kept)
    counts["splits"] = splits
    seconds = sum(phases.values())
    mb = tally.input_bytes / 1e6
    metrics = {
        "seconds": round(seconds, 3),
        "input_mb": round(mb, 3),
        "mb_per_s": round(mb / seconds, 3) if seconds > 0 else None,
        "docs_per_s": round(tally.docs_read / seconds, 1) if seconds > 0 else None,
        "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
        **extra,
    }
    dropped = counts["documents"]["dropped"]
    log(f"[{STAGE}] {tally.files_read}/{tally.files_seen} files, {mb:.1f} MB: {tally.docs_read} docs read, "
        f"{kept} kept, dropped {dropped or 'none'}; "
        + ", ".join(f"{k} {v['docs']}" for k, v in splits.items()) + f" ({metrics['mb_per_s']} MB/s)")
    if tally.report:
        log(f"[{STAGE}] {len(tally.report) + tally.report_omitted} problem(s), e.g. "
            + "; ".join(f"{p['file']}: {p['reason']}" for p in tally.report[:3]) + " (see manifest counts.report)")
    return {"counts": counts, "metrics": metrics}
