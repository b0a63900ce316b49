"""``build.engine: ray``: the build stage on Ray Data, streaming, with the same output bytes as ``local``.

1. read + clean (one task per source file, with its own Tally, returned as a row and merged in file order
   by the driver): rows of id, text, source, split and the document's LSH band keys (MinHash signatures
   per block); kept in the object store (spilled to disk beyond it), never in one process;
2. near-duplicate candidates: the band keys exploded and shuffled by key (Ray Data's sort: range
   partitions of the key), each bucket grouped in its block (a bucket cut by a block edge is joined by the
   driver); the pairs of every bucket with two or more documents come back to the driver, then the
   signatures of those documents only, to confirm each pair by Jaccard and resolve the clusters
   (lmops.data.dedup.resolve_near_duplicates: the local engine's rule, component by component);
3. exact dedup + write: the records shuffled by content hash (a sort on id, then source: range partitions
   of the sha256, so equal texts meet in one partition, one after the other); the driver keeps the first
   (smallest source), drops the near duplicates and streams each record into its split's shards
   (lmops.data.split.ShardWriter), holding at most one shard per split.

Shuffles are Ray Data's sort (tasks on the pooled workers); its hash shuffle starts aggregator actors,
new processes on every run, which cost more than the whole shuffle on a small corpus.

Each sort gets about sqrt(bytes / 1 MB) blocks (at most one per source file), so that its k*k partitions stay
in the object store instead of the driver's memory (``_sorted``).

The driver's memory is the shard buffers plus the candidate pairs and their signatures (proportional to the
near duplicates, not to the corpus); a worker's is one source file's documents or one sort block (about
sqrt(bytes x 1 MB): 33 MB at 1 GB of corpus).
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmops.config import BuildConfig
from lmops.data import engine, listing, sources
from lmops.data.accounting import Tally
from lmops.data.build_steps import STAGE, clean_documents, finish, nothing_kept
from lmops.data.dedup import band_keys, lsh_bands, resolve_near_duplicates, signatures
from lmops.data.progress import phase_line
from lmops.data.split import ShardWriter, assign_split, record_line, split_names
from lmops.errors import LmopsError

# A sort of k blocks makes k*k partitions, each a return of a map task that the driver owns; Ray keeps a
# return under 100 KB (max_direct_call_object_size) in the owner's own memory, not in the object store. With
# one block per source file, 1 GB of corpus made 3969 band-row partitions of ~80 KB, about 370 MB in the driver.
PARTITION_MIN_BYTES = 1 << 20
BAND_ROW_BYTES = 80  # a band row: the uint64 key, the 64-hex-character id, offsets


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

        dropped_near: set[str] = set()
        clusters = 0
        if cfg.dedup.near and n_docs:
            dropped_near, clusters = _near_duplicates(docs, cfg, n_docs)
        t_near = time.perf_counter()
        phase_line(log, STAGE, "ray", "near_dedup", n_docs, tally.input_bytes, t_near - t_read,
                   f"{len(dropped_near)} near duplicate(s) in {clusters} cluster(s)")

        writers = {name: ShardWriter(out, name, cfg.shard_max_bytes) for name in split_names(cfg.split)}
        kept, exact, near = _write_sorted(docs, writers, dropped_near, cfg, tally.input_bytes)
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
    ids, texts, srcs, splits, tallies = [], [], [], [], []
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
    bands = band_keys(signatures(texts, build.dedup), build.dedup) if build.dedup.near and texts else None
    n_bands = 0 if bands is None else bands.shape[1]
    flat = pa.array(np.zeros(0, np.uint64) if bands is None else bands.reshape(-1), pa.uint64())
    offsets = np.concatenate([np.arange(len(ids) + 1) * n_bands, np.full(len(tallies), len(ids) * n_bands)])
    return pa.table({
        "id": pa.array(ids + [""] * len(tallies), pa.string()),
        "text": pa.array(texts + [""] * len(tallies), pa.large_string()),
        "source": pa.array(srcs + [""] * len(tallies), pa.string()),
        "split": pa.array(splits + [""] * len(tallies), pa.string()),
        "bands": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat),
        "index": pa.array([-1] * len(ids) + [i for i, _ in tallies], pa.int64()),
        "tally": pa.array([None] * len(ids) + [t for _, t in tallies], pa.binary()),
    })


def _tally_rows(batch) -> Any:
    import pyarrow.compute as pc

    return batch.filter(pc.is_valid(batch["tally"])).select(["index", "tally"])


def _doc_rows(batch) -> Any:
    import pyarrow.compute as pc

    return batch.filter(pc.is_null(batch["tally"]))


# ---------------------------------------------------------------- 2. near duplicates
def _near_duplicates(docs, cfg: BuildConfig, n_docs: int) -> tuple[set[str], int]:
    import ray

    band_bytes = n_docs * lsh_bands(cfg.dedup) * BAND_ROW_BYTES
    pairs_ds = _sorted(docs.map_batches(_band_rows, batch_format="pyarrow"), "band", band_bytes, docs.num_blocks()
                       ).map_batches(_bucket_pairs, batch_size=None, batch_format="pyarrow")
    pairs: set[tuple[str, str]] = set()
    edges: dict[int, set[str]] = {}
    for batch in pairs_ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for a, b, band, ids in zip(*(batch[c].to_pylist() for c in ("a", "b", "band", "ids"))):
            if band is None:
                pairs.add((a, b))
            else:
                edges.setdefault(band, set()).update(ids)
    for ids in edges.values():
        pairs.update(_all_pairs(ids))
    if not pairs:
        return set(), 0
    # in the object store once, fetched by each task (a kwarg would be pickled into every task)
    wanted = [ray.put({d for p in pairs for d in p})]
    sig_ds = docs.map_batches(_candidate_signatures, batch_format="pyarrow",
                              fn_kwargs={"wanted": wanted, "dedup": cfg.dedup.model_dump()})
    sigs: dict[str, np.ndarray] = {}
    for batch in sig_ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for doc_id, sig in zip(batch["id"].to_pylist(), batch["sig"].to_pylist()):
            sigs[doc_id] = np.frombuffer(sig, dtype="<u8")
    return resolve_near_duplicates(sorted(pairs), sigs, cfg.dedup.threshold)


def _band_rows(batch) -> Any:
    """(band key, id) for every band of every document: what the shuffle groups."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bands = batch["bands"]
    return pa.table({"band": pc.list_flatten(bands), "id": pc.take(batch["id"], pc.list_parent_indices(bands))})


def _bucket_pairs(block) -> Any:
    """Every pair (a < b) of distinct ids in a bucket of this block of band rows sorted by key; the buckets at
    the block's two ends may go on in the next or previous block, so they come back whole (band, ids) for
    the driver to join with their other parts.

    Exact copies share every bucket under one id and make no pair; they are exact dedup's to drop.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    grouped = block.group_by("band").aggregate([("id", "count_distinct"), ("id", "distinct")])
    ends = {block["band"][0].as_py(), block["band"][-1].as_py()} if len(block) else set()
    at_end = pc.is_in(grouped["band"], pa.array(list(ends), pa.uint64()))
    inner = grouped.filter(pc.and_(pc.invert(at_end), pc.greater(grouped["id_count_distinct"], 1)))
    pairs = [p for ids in inner["id_distinct"].to_pylist() for p in _all_pairs(ids)]
    edge = grouped.filter(at_end)
    n = len(edge)
    return pa.table({
        "a": pa.array([a for a, _ in pairs] + [None] * n, pa.string()),
        "b": pa.array([b for _, b in pairs] + [None] * n, pa.string()),
        "band": pa.concat_arrays([pa.nulls(len(pairs), pa.uint64()), edge["band"].combine_chunks()]),
        "ids": pa.concat_arrays([pa.nulls(len(pairs), pa.list_(pa.string())),
                                 edge["id_distinct"].combine_chunks().cast(pa.list_(pa.string()))]),
    })


def _sorted(ds, key, total_bytes: float, n_blocks: int):
    """``ds`` sorted by ``key``, from k blocks (a split/merge, no shuffle) so that the sort's k*k partitions of
    about total / k² bytes stay above PARTITION_MIN_BYTES, in the object store; at most ``n_blocks`` (the
    parallelism a small corpus keeps)."""
    k = max(1, min(n_blocks, int(math.sqrt(total_bytes / PARTITION_MIN_BYTES))))
    return ds.repartition(k).sort(key)


def _all_pairs(ids: Iterable[str]) -> Iterator[tuple[str, str]]:
    ids = sorted(set(ids))
    for i, x in enumerate(ids):
        for y in ids[i + 1:]:
            yield x, y


def _candidate_signatures(batch, *, wanted: list, dedup: dict) -> Any:
    """The MinHash signatures of the candidate documents of this block, once each (exact copies included once)."""
    import pyarrow as pa
    import ray

    wanted = ray.get(wanted[0])
    from lmops.config import DedupConfig

    seen: dict[str, str] = {}
    for doc_id, text in zip(batch["id"].to_pylist(), batch["text"].to_pylist()):
        if doc_id in wanted and doc_id not in seen:
            seen[doc_id] = text
    sigs = signatures(list(seen.values()), DedupConfig.model_validate(dedup)) if seen else np.zeros((0, 0))
    return pa.table({"id": pa.array(list(seen), pa.string()),
                     "sig": pa.array([row.astype("<u8").tobytes() for row in sigs], pa.binary())})


# ---------------------------------------------------------------- 3. exact dedup + write, in id order
def _write_sorted(docs, writers: dict[str, ShardWriter], dropped_near: set[str], cfg: BuildConfig,
                  input_bytes: int) -> tuple[int, int, int]:
    """Stream the records in (id, source) order into the split writers; (kept, exact, near duplicates dropped).

    The local engine's decisions: exact dedup keeps the copy with the smallest source; near dedup drops every
    copy of a dropped id, and with exact dedup off also each further copy of a kept one (Jaccard 1 with it).
    """
    records = _sorted(docs.map_batches(_records, batch_format="pyarrow"), ["id", "source"], input_bytes,
                      docs.num_blocks())
    kept = exact = near = 0
    previous = ""
    for batch in records.iter_batches(batch_size=4096, batch_format="pyarrow"):
        for doc_id, split, line, chars in zip(batch["id"].to_pylist(), batch["split"].to_pylist(),
                                              batch["line"].to_pylist(), batch["chars"].to_pylist()):
            if doc_id < previous:  # never expected: a shuffle that lost the order would write other bytes
                raise RuntimeError(f"ray build: records out of id order ({doc_id} after {previous})")
            repeat, previous = doc_id == previous, doc_id
            if repeat and cfg.dedup.exact:
                exact += 1
            elif doc_id in dropped_near or (repeat and cfg.dedup.near):
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
