"""``build.engine: ray``: the build stage on Ray Data, streaming, with the same output bytes as ``local``.

1. read + clean (one task per source file, with its own Tally, returned as a row and merged in file order
   by the driver): rows of id, text, source, split and the document's MinHash signature (computed per
   block); kept in the object store (spilled to disk beyond it), never in one process;
2. near duplicates (lmops.data.ray_near_dedup): LSH buckets, pairs confirmed by Jaccard and duplicate
   clusters resolved in shuffles on the workers; out come the ids to drop;
3. exact dedup + write: the records and a marker record per dropped id (``_markers``) shuffled by content
   hash (a sort on id, then source: range partitions of the sha256, so equal texts meet one after the
   other, a marker first); the driver keeps the first copy (smallest source), drops the marked ids and
   streams each record into its split's shards (lmops.data.split.ShardWriter), holding at most one shard
   per split.

Shuffles are Ray Data's sort (tasks on the pooled workers; lmops.data.engine.sorted_by sizes their blocks);
its hash shuffle starts aggregator actors, new processes on every run, which cost more than the whole
shuffle on a small corpus.

The driver holds the shard buffers and the sorts' partition references and metadata (about one per MB of the
sorted data), never documents, pairs or ids: 166 -> 181 MB from 250 MB to 1 GB of corpus. A worker holds one
source file's documents or one sort block (about sqrt(bytes x 1 MB): 33 MB at 1 GB).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lmops.config import BuildConfig
from lmops.data import engine, listing, sources
from lmops.data.accounting import Tally
from lmops.data.build_steps import STAGE, clean_documents, finish, nothing_kept
from lmops.data.dedup import signatures
from lmops.data.ray_near_dedup import near_duplicate_ids, signature_bytes
from lmops.data.progress import phase_line
from lmops.data.split import ShardWriter, assign_split, record_line, split_names
from lmops.errors import LmopsError

def produce_dataset(files: list[sources.SourceFile], cfg: BuildConfig, out: Path, *,
                    log: Callable[[str], None], passed: Iterable[listing.Passed] = ()) -> dict[str, Any]:
    """What build.produce_dataset does, on Ray Data; the same files, counts and report."""
    import ray

    with engine.data_context(cfg.ray):
        tally = Tally()
        for p in passed:
            tally.skip_path(p.uri, p.reason, p.detail, named=p.named)
        t0 = time.perf_counter()
        items = [{"index": i, "file": pickle.dumps(f)} for i, f in enumerate(files)]
        read = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
            _read_files, batch_size=1, batch_format="pyarrow", fn_kwargs={"cfg": cfg.model_dump(mode="json")})
        docs = read.materialize()
        tallies = docs.map_batches(_tally_rows, batch_format="pyarrow")
        parts = [row for b in tallies.iter_batches(batch_size=None, batch_format="pyarrow") for row in b.to_pylist()]
        for row in sorted(parts, key=lambda r: r["index"]):
            part = pickle.loads(row["tally"])
            if isinstance(part, Exception):
                raise part
            tally.merge(part)
        n_docs = tally.docs_read - sum(tally.docs_dropped.values())
        if not n_docs:  # said at once: the error is then the only line the stage prints
            raise nothing_kept(len(files), cfg, tally)
        t_read = time.perf_counter()
        phase_line(log, STAGE, "ray", "read_clean", n_docs, tally.input_bytes, t_read - t0)

        dropped, n_dropped, clusters = near_duplicate_ids(docs, cfg.dedup) if cfg.dedup.near else (None, 0, 0)
        t_near = time.perf_counter()
        phase_line(log, STAGE, "ray", "near_dedup", n_docs, tally.input_bytes, t_near - t_read,
                   f"{n_dropped} near duplicate(s) in {clusters} cluster(s)")

        writers = {name: ShardWriter(out, name, cfg.shard_max_bytes) for name in split_names(cfg.split)}
        kept, exact, near = _write_sorted(docs, dropped, writers, cfg)
        t_write = time.perf_counter()
        phase_line(log, STAGE, "ray", "exact_dedup_write", n_docs, tally.input_bytes, t_write - t_near)
    tally.drop("exact_duplicate", exact)
    tally.drop("near_duplicate", near)
    if not kept:
        raise nothing_kept(len(files), cfg, tally)
    splits = {name: w.close() for name, w in writers.items()}
    phases = {"read_clean": t_read - t0, "near_dedup": t_near - t_read, "exact_dedup_write": t_write - t_near}
    return finish(tally, kept, splits, phases, log, engine="ray", near_duplicate_clusters=clusters)


# ---------------------------------------------------------------- 1. read + clean, one file per task
def _read_files(batch, *, cfg: dict) -> Any:
    """The documents of each file of the batch, then one row carrying the file's Tally, or the user error that
    stopped its reading (the row's id is empty, so it sorts first and names no document; every later step
    passes it over)."""
    import pyarrow as pa

    build = BuildConfig.model_validate(cfg)
    ids, texts, srcs, splits, tallies = [], [], [], [], []  # tallies: (file index, pickled Tally or error)
    for index, blob in zip(batch["index"].to_pylist(), batch["file"].to_pylist()):
        tally = Tally()
        try:
            for d in clean_documents(sources.iter_documents([pickle.loads(blob)], build, tally), build, tally):
                ids.append(d.id)
                texts.append(d.text)
                srcs.append(d.source)
                splits.append(assign_split(d.text, build.split))
        except LmopsError as e:  # Ray would pass on only its text: the driver raises it, first file first
            tallies.append((index, pickle.dumps(e)))
            continue
        tallies.append((index, pickle.dumps(tally)))
    sigs = signature_bytes(signatures(texts, build.dedup)) if build.dedup.near and texts else [b""] * len(ids)
    return pa.table({
        "id": pa.array(ids + [""] * len(tallies), pa.string()),
        "text": pa.array(texts + [""] * len(tallies), pa.large_string()),
        "source": pa.array(srcs + [""] * len(tallies), pa.string()),
        "split": pa.array(splits + [""] * len(tallies), pa.string()),
        "sig": pa.array(sigs + [b""] * len(tallies), pa.binary()),
        "index": pa.array([-1] * len(ids) + [i for i, _ in tallies], pa.int64()),
        "tally": pa.array([None] * len(ids) + [t for _, t in tallies], pa.binary()),
    })


def _tally_rows(batch) -> Any:
    import pyarrow.compute as pc

    return batch.filter(pc.is_valid(batch["tally"])).select(["index", "tally"])


def _doc_rows(batch) -> Any:
    import pyarrow.compute as pc

    return batch.filter(pc.is_null(batch["tally"]))


# ---------------------------------------------------------------- 3. exact dedup + write, in id order
def _write_sorted(docs, dropped, writers: dict[str, ShardWriter], cfg: BuildConfig) -> tuple[int, int, int]:
    """Stream the records in (id, source) order into the split writers; (kept, exact, near duplicates dropped).

    The local engine's decisions: exact dedup keeps the copy with the smallest source; near dedup drops every
    copy of a ``dropped`` id (its marker comes first: an empty source), and with exact dedup off also each
    further copy of a kept one (Jaccard 1 with it).
    """
    records = docs.map_batches(_records, batch_format="pyarrow")
    if dropped is not None:
        records = records.union(dropped.map_batches(_markers, batch_format="pyarrow"))
    records = engine.sorted_by(records, ["id", "source"])
    kept = exact = near = 0
    previous = marked = ""
    for batch in records.iter_batches(batch_size=4096, batch_format="pyarrow"):
        for doc_id, source, split, line, chars in zip(*(batch[c].to_pylist()
                                                        for c in ("id", "source", "split", "line", "chars"))):
            if doc_id < previous:  # never expected: a shuffle that lost the order would write other bytes
                raise RuntimeError(f"ray build: records out of id order ({doc_id} after {previous})")
            if not source:
                marked = doc_id
                continue
            repeat, previous = doc_id == previous, doc_id
            if repeat and cfg.dedup.exact:
                exact += 1
            elif doc_id == marked or (repeat and cfg.dedup.near):
                near += 1
            else:
                writers[split].add(line, chars)
                kept += 1
    return kept, exact, near


def _records(batch) -> Any:
    import pyarrow as pa

    from lmops.data.dedup import Doc

    batch = _doc_rows(batch)
    lines, chars = [], []
    for doc_id, text, source in zip(batch["id"].to_pylist(), batch["text"].to_pylist(), batch["source"].to_pylist()):
        lines.append(record_line(Doc(doc_id, text, source)))
        chars.append(len(text))
    return pa.table({"id": batch["id"], "source": batch["source"], "split": batch["split"],
                     "line": pa.array(lines, pa.large_binary()), "chars": pa.array(chars, pa.int64())})


def _markers(batch) -> Any:
    """A record for each dropped id with an empty source, so that it sorts first among its id's records."""
    import pyarrow as pa

    n = len(batch)
    empty = pa.array([""] * n, pa.string())
    return pa.table({"id": batch["id"], "source": empty, "split": empty, "line": pa.array([b""] * n, pa.large_binary()),
                     "chars": pa.array([0] * n, pa.int64())})
