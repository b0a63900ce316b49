"""Benchmark: the build stage at scale, ``engine: local`` against ``engine: ray`` with 1 and 2 workers.

    .venv/bin/python -P bench/build_scale.py [--sizes-mb 250 1000] [--keep DIR]

Corpus: generated here, deterministic (seeded): JSONL files of 16 MB, documents of ~300 words drawn from
an 8000-word made-up vocabulary (unrelated documents share no 5-word shingle), with planted exact
duplicates (5% of documents, in other files) and near duplicates (5%: a copy with one word changed,
true Jaccard of 5-shingles about 0.97). Each configuration builds in a fresh process (a fresh Ray for
ray: its start-up is reported apart and not in MB/s); peak RSS is sampled every 0.2 s: the driver's
and each Ray worker's. Every run must write the same dataset (the same shard digests).
Near dedup is scored against the planted pairs: recall = planted pairs of which exactly one document is
left, precision = near-duplicate drops that belong to a planted pair.
Targets (issue 22): ray with 2 workers >= local and >= 1.6x ray with 1 worker; ray's peak RSS flat between
the two sizes while local's grows; recall >= 0.95 at precision >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SEED = 22
FILE_MB = 16
WORDS_PER_DOC = 300
EXACT_SHARE = NEAR_SHARE = 0.05


# ---------------------------------------------------------------- the corpus
def make_corpus(root: Path, size_mb: float) -> dict:
    """Write ~size_mb MB of JSONL under root; returns the planted near pairs as [original, copy] texts."""
    rng = random.Random(SEED)
    letters = "bcdfghjklmnprstvz"
    vowels = "aeiou"
    vocab = sorted({"".join(rng.choice(letters) + rng.choice(vowels) for _ in range(rng.randint(2, 4)))
                    for _ in range(8000)})
    root.mkdir(parents=True)
    near: list[list[str]] = []
    recent: list[str] = []  # originals to copy from: the last few hundred written
    written, file_no = 0, 0
    out = open(root / f"part-{file_no:04d}.jsonl", "w", encoding="utf-8")
    target = size_mb * 1e6
    while written < target:
        u = rng.random()
        if u < EXACT_SHARE and recent:
            text = rng.choice(recent)
        elif u < EXACT_SHARE + NEAR_SHARE and recent:
            original = rng.choice(recent)
            words = original.split(" ")
            i = rng.randrange(5, len(words) - 5)
            words[i] = rng.choice(vocab)
            text = " ".join(words)
            if text != original:
                near.append([original, text])
        else:
            text = " ".join(rng.choices(vocab, k=WORDS_PER_DOC)) + "."
            recent.append(text)
            if len(recent) > 500:
                recent.pop(0)
        line = json.dumps({"text": text}) + "\n"
        out.write(line)
        written += len(line)
        if out.tell() > FILE_MB * 1e6:
            out.close()
            file_no += 1
            out = open(root / f"part-{file_no:04d}.jsonl", "w", encoding="utf-8")
    out.close()
    return {"near": near, "mb": written / 1e6}


# ---------------------------------------------------------------- one build, in a child process
def child(args: argparse.Namespace) -> None:
    from lmops.config import BuildConfig
    from lmops.data.build import build_dataset

    ray_start = 0.0
    if args.engine == "ray":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        ray_start = time.perf_counter() - t
    cfg = BuildConfig(sources=[args.corpus], engine=args.engine,
                      ray={"num_workers": args.workers} if args.engine == "ray" else {})
    t = time.perf_counter()
    res = build_dataset(cfg, args.out, log=lambda s: print(s, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "ray_start": ray_start, "metrics": res.manifest.metrics,
                      "phases": res.manifest.metrics.get("phase_seconds"),
                      "counts": res.manifest.counts["documents"], "files": res.manifest.files}))


def measured(corpus: Path, out: Path, engine: str, workers: int | None) -> dict:
    """Run one build in a fresh process; peak private RSS (MB) of the driver, of the busiest Ray worker and of
    all processes together (sampled, so at any one moment), and the object store's shared memory apart."""
    import psutil

    cmd = [sys.executable, "-P", __file__, "--child", "--engine", engine, "--corpus", str(corpus), "--out", str(out)]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"driver": 0.0, "worker": 0.0, "all": 0.0, "shm": 0.0}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0.0
                for p in tree:
                    try:
                        # resident minus shared: Ray's object store is shared memory that every process
                        # reading a block maps, and counting it once per process would count it many times
                        mem = p.memory_info()
                        rss = (mem.rss - mem.shared) / 1e6
                        name = " ".join(p.cmdline()[:1])
                    except psutil.Error:
                        continue
                    total += rss
                    if p.pid == proc.pid:
                        peak["driver"] = max(peak["driver"], rss)
                    elif name.startswith("ray::"):
                        peak["worker"] = max(peak["worker"], rss)
                peak["all"] = max(peak["all"], total)
                peak["shm"] = max(peak["shm"], _dev_shm_mb())
            except psutil.Error:
                pass
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} x{workers}: build failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mb"] = {k: round(v) for k, v in peak.items()}
    return result


def _dev_shm_mb() -> float:
    """Ray's object store lives in /dev/shm (plasma files); its size there, in MB."""
    try:
        st = os.statvfs("/dev/shm")
        return (st.f_blocks - st.f_bfree) * st.f_frsize / 1e6
    except OSError:
        return 0.0


def near_scores(corpus_info: dict, out: Path, near_dropped: int) -> tuple[float | None, float | None]:
    """(precision, recall) of near dedup against the planted clusters (an original and its copies).

    Recall: the share of planted clusters left with exactly one document. Precision: the share of the
    near-duplicate drops that are members of a planted cluster (no other document has a near twin).
    """
    from lmops.data.clean import text_id

    kept = set()
    for shard in out.glob("*.jsonl"):
        with open(shard, encoding="utf-8") as f:
            kept.update(json.loads(line)["id"] for line in f)
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in corpus_info["near"]:
        parent[root(text_id(a))] = root(text_id(b))
    clusters: dict[str, list[str]] = {}
    for doc in list(parent):
        clusters.setdefault(root(doc), []).append(doc)
    recall = sum(1 for m in clusters.values() if sum(d in kept for d in m) == 1) / len(clusters) if clusters else None
    # the documents of planted clusters that are gone were dropped as near duplicates (exact dedup keeps one copy)
    true_drops = sum(1 for d in parent if d not in kept)
    precision = min(true_drops, near_dropped) / near_dropped if near_dropped else None
    return precision, recall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[250, 1000])
    ap.add_argument("--keep", type=Path, help="generate the corpora here and keep them (reused when present)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    work = args.keep or Path(tempfile.mkdtemp(prefix="lmops-build-scale-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    table = []
    try:
        for size in args.sizes_mb:
            corpus = work / f"corpus-{size:g}mb"
            info_path = work / f"corpus-{size:g}mb.json"
            if not info_path.exists():
                t = time.perf_counter()
                info = make_corpus(corpus, size)
                info_path.write_text(json.dumps(info))
                print(f"generated {info['mb']:.0f} MB in {time.perf_counter() - t:.0f}s: {len(info['near'])} planted near pairs")
            info = json.loads(info_path.read_text())
            digests = set()
            for engine, workers in (("local", None), ("ray", 1), ("ray", 2)):
                out = work / f"out-{size:g}-{engine}-{workers}"
                shutil.rmtree(out, ignore_errors=True)
                r = measured(corpus, out, engine, workers)
                digests.add(json.dumps(r["files"], sort_keys=True))
                row = {"size_mb": round(info["mb"]), "engine": engine, "workers": workers or "-",
                       "seconds": round(r["seconds"], 1), "mb_per_s": round(info["mb"] / r["seconds"], 2),
                       "ray_start_s": round(r["ray_start"], 1), **{f"peak_{k}_mb": v for k, v in r["peak_mb"].items()},
                       "load": round(os.getloadavg()[0], 1), "phases": r["phases"]}
                if engine == "ray" and workers == 2:
                    precision, recall = near_scores(info, out, r["counts"]["dropped"].get("near_duplicate", 0))
                    row["near_precision"], row["near_recall"] = precision, recall
                table.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            print(f"size {size:g} MB: every engine wrote the same dataset: {len(digests) == 1}")
            if len(digests) != 1:
                raise SystemExit("engines disagree: the outputs differ")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    by = {(r["size_mb"], r["engine"], r["workers"]): r for r in table}
    for size in sorted({r["size_mb"] for r in table}):
        local, r1, r2 = by[(size, "local", "-")], by[(size, "ray", 1)], by[(size, "ray", 2)]
        print(f"{size} MB: ray x2 / local = {r2['mb_per_s'] / local['mb_per_s']:.2f}, ray x2 / ray x1 = "
              f"{r2['mb_per_s'] / r1['mb_per_s']:.2f}; MB/s per core: local {local['mb_per_s'] / 2:.2f} "
              f"(up to 2 processes), ray x1 {r1['mb_per_s']:.2f}, ray x2 {r2['mb_per_s'] / 2:.2f}")
    sizes = sorted({r["size_mb"] for r in table})
    if len(sizes) >= 2:
        small, big = sizes[0], sizes[-1]
        for key in (("local", "-"), ("ray", 1), ("ray", 2)):
            a, b = by[(small, *key)], by[(big, *key)]
            print(f"peak RSS {key[0]} x{key[1]}: {small} -> {big} MB corpus: driver {a['peak_driver_mb']} -> "
                  f"{b['peak_driver_mb']} MB, worker {a['peak_worker_mb']} -> {b['peak_worker_mb']} MB")


if __name__ == "__main__":
    main()
