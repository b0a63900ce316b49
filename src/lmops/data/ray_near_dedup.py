"""Near-duplicate clusters on Ray Data (``build.engine: ray``), resolved on the workers: the driver holds counts.

The local engine's decisions (lmops.data.dedup.near_dedup), taken in shuffles, datatrove's way (signatures ->
buckets -> clusters -> filter):

1. candidates: the documents' LSH band keys sorted by key; the documents of each bucket make pairs, each
   pair as two endpoint rows (one keyed by each of its ids);
2. confirm: the endpoint rows sorted by id together with every document's (id, MinHash signature) row give
   each endpoint its signature; sorted by pair, the two signatures of a pair meet and the pair is an edge
   when their estimated Jaccard reaches the threshold;
3. clusters: connected components by min-label propagation (each document takes the smallest id among its
   own label and its neighbours' labels), one sort per round until no label changes: rounds grow with a
   cluster's diameter, 2-3 for duplicate clusters, which are near-cliques;
4. the id-order rule per cluster (lmops.data.dedup.drop_in_id_order), its members sorted by label: out come
   the dropped ids (lmops.data.ray_build sorts them among the records as markers).

A Ray Data sort cuts its range partitions by key value, so all rows of one key land in one output block (Ray
Data's own ``groupby().map_groups`` relies on this): each step below groups within its block.
Memory: the driver holds the sorts' object references and the round counts; a worker holds one sort block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmops.config import DedupConfig
from lmops.data import engine
from lmops.data.dedup import band_keys, drop_in_id_order


def signature_bytes(sigs: np.ndarray) -> list[bytes]:
    """Each signature as little-endian uint32 values: datasketch's hash values are below 2**32, and equality of
    values (all the Jaccard estimate compares) survives the narrowing that halves the shuffled bytes."""
    if sigs.size and int(sigs.max()) >> 32:
        raise ValueError("MinHash hash values above 32 bits: a datasketch hash scheme this build does not know")
    return [row.astype("<u4").tobytes() for row in sigs]


def near_duplicate_ids(docs, cfg: DedupConfig) -> tuple[Any, int, int]:
    """(a dataset of the document ids that near dedup drops, column id; how many; the number of duplicate
    clusters); None for the dataset when no pair is confirmed.

    ``docs``: rows with id and sig (signature_bytes; empty for the file-tally rows, which have no id).
    """
    def grouped(ds, key, fn, **kwargs):  # fn over each block of ds sorted by key: whole groups
        return engine.sorted_by(ds, key).map_batches(fn, batch_size=None, batch_format="pyarrow", **kwargs)

    bands = docs.map_batches(_band_rows, batch_format="pyarrow", fn_kwargs={"dedup": cfg.model_dump()})
    ends = grouped(bands, "band", _bucket_endpoints)
    with_sigs = grouped(ends.union(docs.map_batches(_signature_rows, batch_format="pyarrow")), "id",
                        _endpoint_signatures)
    edges = grouped(with_sigs, ["a", "b"], _confirmed_edges, fn_kwargs={"threshold": cfg.threshold})
    nodes = grouped(edges, "node", _adjacency).materialize()
    if not nodes.count():
        return None, 0, 0
    while nodes.sum("changed"):  # a round of min-label propagation; the first labels count as a change
        nodes = grouped(nodes.map_batches(_label_messages, batch_format="pyarrow"), "node", _smallest_label
                        ).materialize()
    clusters = nodes.map_batches(_cluster_roots, batch_format="pyarrow").count()
    dropped = grouped(nodes, "label", _dropped_ids).materialize()
    return dropped, dropped.count(), clusters


# ---------------------------------------------------------------- 1. candidates
def _signed(batch) -> Any:
    """The document rows of a docs batch: those with a signature (a file's tally row has none)."""
    import pyarrow.compute as pc

    return batch.filter(pc.greater(pc.binary_length(batch["sig"]), 0))


def _band_rows(batch, *, dedup: dict) -> Any:
    """(band key, id) for every band of every document: what the bucket sort groups."""
    import pyarrow as pa
    import pyarrow.compute as pc

    docs = _signed(batch)
    cfg = DedupConfig.model_validate(dedup)
    sigs = np.frombuffer(b"".join(docs["sig"].to_pylist()), dtype="<u4").reshape(len(docs), cfg.num_perm)
    keys = band_keys(sigs, cfg)
    return pa.table({"band": pa.array(keys.reshape(-1), pa.uint64()),
                     "id": pc.take(docs["id"], pa.array(np.repeat(np.arange(len(docs)), keys.shape[1])))})


def _bucket_endpoints(block) -> Any:
    """Each pair (a < b) of distinct ids in a bucket, as two endpoint rows: (id a, other b) and (id b, other a).

    Exact copies share every bucket under one id and make no pair: they are exact dedup's to drop. A pair met
    in several buckets comes out once per bucket; _endpoint_signatures keeps one.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    grouped = block.group_by("band").aggregate([("id", "count_distinct"), ("id", "distinct")])
    shared = grouped.filter(pc.greater(grouped["id_count_distinct"], 1))["id_distinct"].to_pylist()
    ids, others = [], []
    for bucket in shared:
        bucket = sorted(bucket)
        for i, a in enumerate(bucket):
            for b in bucket[i + 1:]:
                ids += (a, b)
                others += (b, a)
    return pa.table({"id": pa.array(ids, pa.string()), "other": pa.array(others, pa.string()),
                     "sig": pa.nulls(len(ids), pa.binary())})  # the schema of _signature_rows, for the union


def _signature_rows(batch) -> Any:
    """(id, signature) of every document: the other side of the confirm step's join."""
    import pyarrow as pa

    docs = _signed(batch)
    return pa.table({"id": docs["id"], "other": pa.nulls(len(docs), pa.string()), "sig": docs["sig"]})


# ---------------------------------------------------------------- 2. confirm
def _endpoint_signatures(block) -> Any:
    """Each distinct endpoint (id, other) of this block with the id's signature, keyed by its pair (a, b)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ends = block.filter(pc.is_null(block["sig"]))
    wanted = pa.array(set(ends["id"].to_pylist()), pa.string())
    sig_rows = block.filter(pc.and_(pc.is_valid(block["sig"]), pc.is_in(block["id"], wanted)))
    sig_of = dict(zip(sig_rows["id"].to_pylist(), sig_rows["sig"].to_pylist()))  # copies: equal signatures
    pairs = sorted(set(zip(ends["id"].to_pylist(), ends["other"].to_pylist())))
    return pa.table({"a": pa.array([min(i, o) for i, o in pairs], pa.string()),
                     "b": pa.array([max(i, o) for i, o in pairs], pa.string()),
                     "sig": pa.array([sig_of[i] for i, _ in pairs], pa.binary())})


def _confirmed_edges(block, *, threshold: float) -> Any:
    """The pairs whose two signatures (two rows, one after the other in the (a, b) sort) reach ``threshold``,
    each as two adjacency rows (node, neighbour)."""
    import pyarrow as pa

    a, b, sigs = (block[c].to_pylist() for c in ("a", "b", "sig"))
    if a[0::2] != a[1::2] or b[0::2] != b[1::2]:  # never expected: each pair has one row per end
        raise RuntimeError("ray near dedup: a candidate pair without both signatures")
    nodes, nbrs = [], []
    for i in range(0, len(a), 2):
        x, y = np.frombuffer(sigs[i], "<u4"), np.frombuffer(sigs[i + 1], "<u4")
        if np.count_nonzero(x == y) / len(x) >= threshold:
            nodes += (a[i], b[i])
            nbrs += (b[i], a[i])
    return pa.table({"node": pa.array(nodes, pa.string()), "nbr": pa.array(nbrs, pa.string())})


# ---------------------------------------------------------------- 3. clusters
def _adjacency(block) -> Any:
    """One row per document with edges: its neighbours, and its first label (the smallest of it and them)."""
    nbrs: dict[str, list[str]] = {}
    for node, nbr in zip(block["node"].to_pylist(), block["nbr"].to_pylist()):
        nbrs.setdefault(node, []).append(nbr)
    return _node_table({n: min(n, *ns) for n, ns in nbrs.items()}, nbrs, changed=set(nbrs))


def _node_table(labels: dict[str, str], nbrs: dict[str, list[str]], changed: set[str]) -> Any:
    import pyarrow as pa

    nodes = sorted(labels)
    return pa.table({"node": pa.array(nodes, pa.string()), "label": pa.array([labels[n] for n in nodes], pa.string()),
                     "nbrs": pa.array([nbrs[n] for n in nodes], pa.list_(pa.string())),
                     "changed": pa.array([int(n in changed) for n in nodes], pa.int64())})


def _label_messages(batch) -> Any:
    """Each node's own row, and its label sent to each neighbour (a row with no neighbours of its own)."""
    import pyarrow as pa

    own_nodes, labels, nbrs = (batch[c].to_pylist() for c in ("node", "label", "nbrs"))
    to, sent = [], []
    for label, ns in zip(labels, nbrs):
        to += ns
        sent += [label] * len(ns)
    return pa.table({"node": pa.array(own_nodes + to, pa.string()), "label": pa.array(labels + sent, pa.string()),
                     "nbrs": pa.array(nbrs + [None] * len(to), pa.list_(pa.string()))})


def _smallest_label(block) -> Any:
    """Each node's label: the smallest of its own and those sent to it; ``changed`` where that is new."""
    own: dict[str, str] = {}
    best: dict[str, str] = {}
    nbrs: dict[str, list[str]] = {}
    for node, label, ns in zip(*(block[c].to_pylist() for c in ("node", "label", "nbrs"))):
        if ns is not None:
            own[node] = label
            nbrs[node] = ns
        best[node] = min(best.get(node, label), label)
    return _node_table({n: best[n] for n in own}, nbrs, changed={n for n in own if best[n] != own[n]})


def _cluster_roots(batch) -> Any:
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch["node"], batch["label"])).select(["node"])


# ---------------------------------------------------------------- 4. the id-order rule, per cluster
def _dropped_ids(block) -> Any:
    """The ids dropped by the id-order rule in each cluster of this block (a cluster's rows: one label)."""
    import pyarrow as pa

    clusters: dict[str, dict[str, set[str]]] = {}
    for node, label, ns in zip(*(block[c].to_pylist() for c in ("node", "label", "nbrs"))):
        clusters.setdefault(label, {})[node] = set(ns)
    dropped = sorted(d for edges in clusters.values() for d in drop_in_id_order(edges))
    return pa.table({"id": pa.array(dropped, pa.string())})
