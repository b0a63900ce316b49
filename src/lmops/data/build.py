"""Stage 1, ``build``: raw sources -> cleaned, deduplicated, split jsonl shards (dataset/).

read (sources.py) -> clean (clean.py) -> length filters -> exact + near dedup (dedup.py)
-> split + shards (split.py), inside ``lmops.manifest.run_stage`` so an unchanged build is "cached".

The cache key holds the code, the config section *without* ``sources`` and the sources' content
digest: the content, not the paths, decides whether the output is still valid, so moving or
renaming the corpus is a cache hit and editing one byte is a miss. The source list (uri, size,
content id) is still recorded in the manifest's inputs for lineage.

With ``engine: local`` every document is held in memory between reading and writing (dedup needs them
all); that suits corpora up to a few GB on one machine. ``engine: ray`` (lmops.data.ray_build) streams
the same steps through Ray Data with bounded memory and writes the same bytes, so the engine (and its
``ray`` settings) is left out of the cache key: a dataset built by either is a cache hit for both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

from lmops.config import BuildConfig
from lmops.data import (
    accounting, build_steps, clean, compressed, dedup, engine, listing, progress, ray_build, ray_near_dedup, sources,
    split,
)
from lmops.data.accounting import Tally
from lmops.data.build_steps import STAGE, clean_documents, finish, nothing_kept
from lmops.data.dedup import Doc, exact_dedup, near_dedup
from lmops.data.progress import phase_line
from lmops.data.sources import iter_documents, list_sources, sources_digest
from lmops.data.split import assign_split, split_names, write_shards
from lmops.manifest import StageResult, code_digest, run_stage

CODE = code_digest(__file__, accounting.__file__, build_steps.__file__, clean.__file__, compressed.__file__,
                   dedup.__file__, engine.__file__, listing.__file__, progress.__file__, ray_build.__file__,
                   ray_near_dedup.__file__, sources.__file__, split.__file__)


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
    config = cfg.model_dump(mode="json", exclude={"sources", "engine", "ray"})
    if engine.resolve(cfg.engine) == "ray":
        def produce(tmp: Path) -> dict[str, Any]:
            return ray_build.produce_dataset(files, cfg, tmp, log=log, passed=passed)
    else:
        def produce(tmp: Path) -> dict[str, Any]:
            return produce_dataset(files, cfg, tmp, workers=workers, log=log, passed=passed)
    return run_stage(STAGE, out_dir, code=CODE, config=config, inputs=inputs, cache_dir=cache_dir, log=log,
                     produce=produce)


def produce_dataset(files: list[sources.SourceFile], cfg: BuildConfig, out: Path, *,
                    workers: int | None = None, log: Callable[[str], None] = _stderr,
                    passed: Iterable[listing.Passed] = ()) -> dict[str, Any]:
    """Read, clean, filter, dedup, split and write the shards into ``out``; returns counts and metrics."""
    t0 = time.perf_counter()
    tally = Tally()
    for p in passed:
        tally.skip_path(p.uri, p.reason, p.detail, named=p.named)
    docs = list(clean_documents(iter_documents(files, cfg, tally), cfg, tally))
    t_read = time.perf_counter()
    if not docs:  # said at once: the error is then the only line the stage prints
        raise nothing_kept(len(files), cfg, tally)
    n_docs, nbytes = len(docs), tally.input_bytes
    phase_line(log, STAGE, "local", "read_clean", n_docs, nbytes, t_read - t0)

    if cfg.dedup.exact:
        docs, dropped = exact_dedup(docs)
        tally.drop("exact_duplicate", dropped)
    else:
        docs.sort(key=lambda d: (d.id, d.source))
    t_exact = time.perf_counter()
    phase_line(log, STAGE, "local", "exact_dedup", n_docs, nbytes, t_exact - t_read,
               f"{tally.docs_dropped.get('exact_duplicate', 0)} exact duplicate(s)")
    if cfg.dedup.near and docs:
        docs, dropped = near_dedup(docs, cfg.dedup, workers)
        tally.drop("near_duplicate", dropped)
    t_near = time.perf_counter()
    phase_line(log, STAGE, "local", "near_dedup", n_docs, nbytes, t_near - t_exact,
               f"{tally.docs_dropped.get('near_duplicate', 0)} near duplicate(s)")

    by_split: dict[str, list[Doc]] = {name: [] for name in split_names(cfg.split)}
    for d in docs:
        by_split[assign_split(d.text, cfg.split)].append(d)
    splits = {name: write_shards(out, name, ds, cfg.shard_max_bytes) for name, ds in by_split.items()}
    t_write = time.perf_counter()
    phase_line(log, STAGE, "local", "split_write", n_docs, nbytes, t_write - t_near)
    phases = {"read_clean": t_read - t0, "exact_dedup": t_exact - t_read, "near_dedup": t_near - t_exact,
              "split_write": t_write - t_near}
    return finish(tally, len(docs), splits, phases, log, engine="local")
