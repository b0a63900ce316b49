"""Exact and near-duplicate removal.

Both passes walk the documents in the order of their id (the sha256 of the normalized text), so
which copy of a duplicate group survives depends only on the texts, never on file order or names.
Near duplicates: datasketch MinHash over word shingles, candidates from MinHashLSH, each candidate
confirmed by its estimated Jaccard similarity (LSH alone also returns pairs somewhat below the threshold).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lmops.config import DedupConfig

if TYPE_CHECKING:  # imported where used: datasketch (and the scipy it loads) costs ~1 s, a cached build none
    from datasketch import MinHash, MinHashLSH

SEED = 1  # fixed: the permutations, hence every decision, are the same on every machine and run
PARALLEL_MIN_DOCS = 4000
"""Below this many documents a process pool costs more to start than it saves."""
CHUNK_DOCS = 500


@dataclass(frozen=True)
class Doc:
    id: str  # sha256 of text
    text: str
    source: str


def exact_dedup(docs: Iterable[Doc]) -> tuple[list[Doc], int]:
    """One document per distinct text, sorted by id; the copy with the smallest source name is kept.

    Returns (kept, number dropped).
    """
    best: dict[str, Doc] = {}
    n = 0
    for d in docs:
        n += 1
        seen = best.get(d.id)
        if seen is None or d.source < seen.source:
            best[d.id] = d
    kept = [best[k] for k in sorted(best)]
    return kept, n - len(kept)


def shingles(text: str, k: int) -> list[bytes]:
    """Distinct lower-cased k-word shingles (the whole text when it has fewer than k words)."""
    words = text.lower().split()
    if len(words) <= k:
        return [" ".join(words).encode()]
    return list({" ".join(words[i:i + k]).encode() for i in range(len(words) - k + 1)})


def signatures(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """MinHash hash values, one row per text (datasketch's bulk generator reuses the permutations)."""
    from datasketch import MinHash

    gen = MinHash.generator((shingles(t, cfg.shingle_words) for t in texts), num_perm=cfg.num_perm, seed=SEED)
    out = np.empty((len(texts), cfg.num_perm), dtype=np.uint64)  # wide enough for every datasketch scheme
    for i, m in enumerate(gen):
        out[i] = m.hashvalues
    return out


def _signatures_task(args: tuple[list[str], dict]) -> np.ndarray:
    texts, cfg = args
    return signatures(texts, DedupConfig.model_validate(cfg))


def all_signatures(texts: list[str], cfg: DedupConfig, workers: int | None = None) -> Iterator[np.ndarray]:
    """Signature chunks in input order; spread over processes when there is enough work."""
    chunks = [texts[i:i + CHUNK_DOCS] for i in range(0, len(texts), CHUNK_DOCS)]
    # default: half the cores (measured: no gain from a second process on 2 shared cores)
    workers = workers if workers is not None else max(1, (os.cpu_count() or 1) // 2)
    if workers <= 1 or len(texts) < PARALLEL_MIN_DOCS:
        for chunk in chunks:
            yield signatures(chunk, cfg)
        return
    cfg_dict = cfg.model_dump()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_signatures_task, [(c, cfg_dict) for c in chunks])


def _lsh_index(cfg: DedupConfig) -> MinHashLSH:
    from datasketch import MinHashLSH

    try:
        return MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    except ValueError:
        # high thresholds with few permutations want a single band, which datasketch refuses (b < 2);
        # two half-width bands find every pair one band would, and more: the Jaccard check filters them
        return MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=(2, cfg.num_perm // 2))


def near_dedup(docs: list[Doc], cfg: DedupConfig, workers: int | None = None) -> tuple[list[Doc], int]:
    """Drop each document whose estimated Jaccard with an earlier kept one is >= cfg.threshold.

    ``docs`` must be sorted by id (as exact_dedup returns them). Returns (kept, number dropped).
    """
    lsh = _lsh_index(cfg)
    from datasketch import MinHash

    template = MinHash(num_perm=cfg.num_perm, seed=SEED)
    kept_sigs: dict[int, MinHash] = {}
    kept: list[Doc] = []
    i = 0
    for chunk in all_signatures([d.text for d in docs], cfg, workers):
        for row in chunk:
            m = MinHash(seed=SEED, hashvalues=row.astype(template.hashvalues.dtype),
                        permutations=template.permutations, scheme=template.scheme)
            if not any(m.jaccard(kept_sigs[c]) >= cfg.threshold for c in lsh.query(m)):
                lsh.insert(i, m, check_duplication=False)
                kept_sigs[i] = m
                kept.append(docs[i])
            i += 1
    return kept, len(docs) - len(kept)


# ---------------------------------------------------------------- near dedup in stages (engine: ray)
# The same decisions as near_dedup, taken in steps that can run apart: signatures per block, LSH band
# buckets grouped across the dataset, candidate pairs confirmed by Jaccard, then the rule applied per
# duplicate cluster. near_dedup keeps a document unless an earlier-kept one (in id order) shares an LSH
# band with it and reaches the threshold; within each connected component of the confirmed pairs that is
# decided by walking the component in id order, so it does not depend on blocks, workers or their order.
def band_keys(sigs: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """One uint64 per (document, LSH band): a hash of the band's number and its hash values.

    Two documents share a key where datasketch's index puts them in one bucket (same band, equal values);
    64 bits keep the shuffled rows small, and a chance collision only adds a candidate that the Jaccard
    check then judges (it cannot add a pair below the threshold).
    """
    ranges = _lsh_index(cfg).hashranges
    out = np.empty((len(sigs), len(ranges)), dtype=np.uint64)
    for i, row in enumerate(np.ascontiguousarray(sigs, dtype="<u8")):
        for b, (start, end) in enumerate(ranges):
            digest = hashlib.blake2b(row[start:end].tobytes(), digest_size=8, person=b"lmops-band%d" % b).digest()
            out[i, b] = int.from_bytes(digest, "little")
    return out


def drop_in_id_order(edges: dict[str, set[str]]) -> list[str]:
    """The documents to drop from duplicate clusters (``edges``: each document's confirmed near duplicates).

    Walked in id order, a document is kept unless an edge joins it to one already kept: near_dedup's rule,
    and within one cluster the same answer whatever the other clusters are.
    """
    kept: set[str] = set()
    dropped: list[str] = []
    for n in sorted(edges):
        if edges[n] & kept:
            dropped.append(n)
        else:
            kept.add(n)
    return dropped
