"""Stage 1, ``build``: raw sources -> cleaned, deduplicated, split jsonl shards (dataset/).

read (sources.py) -> clean (clean.py) -> length filters -> exact + near dedup (dedup.py)
-> split + shards (split.py), inside ``lmops.manifest.run_stage`` so an unchanged build is "cached".

The cache key holds the code, the config section *without* ``sources`` and the sources' content
digest: the content, not the paths, decides whether the output is still valid, so moving or
renaming the corpus is a cache hit and editing one byte is a miss. The source list (uri, size,
content id) is still recorded in the manifest's inputs for lineage.

Every document is held in memory between reading and writing (dedup needs them all); that suits
corpora up to a few GB on one machine, which is what this stage is for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

from lmops.config import BuildConfig
from lmops.data import accounting, clean, compressed, dedup, listing, sources, split
from lmops.data.accounting import Tally
from lmops.data.clean import clean_text, text_id
from lmops.data.dedup import Doc, exact_dedup, near_dedup
from lmops.data.sources import BuildError, iter_documents, list_sources, sources_digest
from lmops.data.split import assign_split, split_names, write_shards
from lmops.manifest import StageResult, code_digest, run_stage

STAGE = "build"
CODE = code_digest(__file__, accounting.__file__, clean.__file__, compressed.__file__, dedup.__file__,
                   listing.__file__, sources.__file__, split.__file__)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def build_dataset(
    cfg: BuildConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = _stderr,
) -> StageResult:
    """Build (or reuse) the dataset directory ``out_dir`` from ``cfg.sources``.

    ``workers``: processes for MinHash signatures (default: all cores; only used for large inputs).
    Raises StorageError for a source that matches nothing, BuildError when nothing is kept or a bad
    record is met with ``bad_records: fail``.
    """
    # paths passed over are not in the digest: they change no output, and their names would make a
    # renamed corpus a cache miss; the report of the build that ran names them
    files, passed = list_sources(cfg.sources)
    digest = sources_digest(files)
    inputs = {"sources": {
        "digest": digest,
        "uris": list(cfg.sources),
        "files": [{"uri": f.uri, "bytes": f.entry.size, "content": f.content_id} for f in files],
    }}
    config = cfg.model_dump(mode="json", exclude={"sources"})
    return run_stage(
        STAGE, out_dir, code=CODE, config=config, inputs=inputs, cache_dir=cache_dir, log=log,
        produce=lambda tmp: produce_dataset(files, cfg, tmp, workers=workers, log=log, passed=passed),
    )


def produce_dataset(files: list[sources.SourceFile], cfg: BuildConfig, out: Path, *,
                    workers: int | None = None, log: Callable[[str], None] = _stderr,
                    passed: Iterable[listing.Passed] = ()) -> dict[str, Any]:
    """Read, clean, filter, dedup, split and write the shards into ``out``; returns counts and metrics."""
    t0 = time.perf_counter()
    tally = Tally()
    for p in passed:
        tally.skip_path(p.uri, p.reason, p.detail, named=p.named)
    docs = list(_cleaned(iter_documents(files, cfg, tally), cfg, tally))
    t_read = time.perf_counter()

    if cfg.dedup.exact:
        docs, dropped = exact_dedup(docs)
        tally.drop("exact_duplicate", dropped)
    else:
        docs.sort(key=lambda d: (d.id, d.source))
    t_exact = time.perf_counter()
    if cfg.dedup.near and docs:
        docs, dropped = near_dedup(docs, cfg.dedup, workers)
        tally.drop("near_duplicate", dropped)
    t_near = time.perf_counter()

    if not docs:
        examples = "; ".join(f"{p['file']}: {p['reason']}" for p in tally.report[:3])
        raise BuildError(
            f"nothing kept from {len(files)} file(s) in build.sources {cfg.sources}: "
            f"{tally.docs_read} document(s) read, dropped {dict(tally.docs_dropped)}, "
            f"files skipped {dict(tally.files_skipped)}, paths skipped {dict(tally.paths_skipped)}"
            + (f" (e.g. {examples})" if examples else "")
            + f" — check the sources, build.min_chars/max_chars and the formats ({sources.format_list()})"
        )
    by_split: dict[str, list[Doc]] = {name: [] for name in split_names(cfg.split)}
    for d in docs:
        by_split[assign_split(d.text, cfg.split)].append(d)
    splits = {name: write_shards(out, name, ds, cfg.shard_max_bytes) for name, ds in by_split.items()}
    t_write = time.perf_counter()

    counts = tally.counts(kept=len(docs))
    counts["splits"] = splits
    seconds = t_write - t0
    mb = tally.input_bytes / 1e6
    metrics = {
        "seconds": round(seconds, 3),
        "input_mb": round(mb, 3),
        "mb_per_s": round(mb / seconds, 3) if seconds > 0 else None,
        "docs_per_s": round(tally.docs_read / seconds, 1) if seconds > 0 else None,
        "phase_seconds": {"read_clean": round(t_read - t0, 3), "exact_dedup": round(t_exact - t_read, 3),
                          "near_dedup": round(t_near - t_exact, 3), "split_write": round(t_write - t_near, 3)},
    }
    dropped = counts["documents"]["dropped"]
    log(f"[{STAGE}] {tally.files_read}/{tally.files_seen} files, {mb:.1f} MB: {tally.docs_read} docs read, "
        f"{len(docs)} kept, dropped {dropped or 'none'}; "
        + ", ".join(f"{k} {v['docs']}" for k, v in splits.items()) + f" ({metrics['mb_per_s']} MB/s)")
    if tally.report:
        log(f"[{STAGE}] {len(tally.report) + tally.report_omitted} problem(s), e.g. "
            + "; ".join(f"{p['file']}: {p['reason']}" for p in tally.report[:3]) + " (see manifest counts.report)")
    return {"counts": counts, "metrics": metrics}


def _cleaned(raw: Iterable[sources.RawDoc], cfg: BuildConfig, tally: Tally) -> Iterator[Doc]:
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
