"""engine: ray gives the local engine's answer: the same kept documents, splits, shard bytes, counts and report,
and byte-identical token shards. Every comparison is against a real local build of the same input, on the
session's Ray (tests/conftest.py)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from lmops.config import BuildConfig, DedupConfig, RayDataConfig, TokenizeConfig
from lmops.data import accounting, engine
from lmops.data.accounting import Tally
from lmops.data.build import build_dataset
from lmops.data.dedup import drop_in_id_order
from lmops.data.sample_corpus import make_sample_corpus
from lmops.data.sources import BuildError
from lmops.data.ray_near_dedup import near_duplicate_ids, signature_bytes
from lmops.data.ray_tokenize import line_ranges
from lmops.data.tokenize import tokenize_dataset
from lmops.data.tokenizer import training_sample
from tests.data.build_inputs import prose, write_jsonl


def _both(cfg: BuildConfig, tmp_path: Path, name: str):
    """Build with each engine (no shared cache: the engine is not in the key, so a cache would hide ray)."""
    out = {}
    for which in ("local", "ray"):
        out[which] = build_dataset(cfg.model_copy(update={"engine": which}), tmp_path / f"{name}-{which}",
                                   log=lambda s: None)
    return out["local"], out["ray"]


def _assert_same_dataset(local, ray) -> None:
    assert ray.manifest.metrics["engine"] == "ray" and local.manifest.metrics["engine"] == "local"
    assert ray.manifest.key == local.manifest.key
    assert ray.manifest.files == local.manifest.files  # every shard's name, size and sha256
    assert ray.manifest.counts == local.manifest.counts  # kept, dropped by reason, splits, report
    for name in local.manifest.files:
        assert (ray.path / name).read_bytes() == (local.path / name).read_bytes()


def test_sample_corpus_same_dataset_and_token_shards(ray_runtime, tmp_path):
    corpus = make_sample_corpus(tmp_path / "corpus")
    local, ray = _both(BuildConfig(sources=[str(corpus)]), tmp_path, "sample")
    _assert_same_dataset(local, ray)
    c = local.manifest.counts["documents"]["dropped"]
    assert c["exact_duplicate"] > 0 and c["near_duplicate"] > 0  # both dedups had work to do
    assert ray.manifest.metrics["near_duplicate_clusters"] > 0
    assert set(ray.manifest.metrics["phase_seconds"]) == {"read_clean", "near_dedup", "exact_dedup_write"}

    # tokenize the same dataset both ways; a small block size gives the ray engine many ranges per shard
    tok = TokenizeConfig(vocab_size=512, batch_size=64)
    t_local = tokenize_dataset(tok, local.path, tmp_path / "tok-local", log=lambda s: None)
    t_ray = tokenize_dataset(tok.model_copy(update={"engine": "ray", "ray": RayDataConfig(block_mb=0.25)}), local.path,
                             tmp_path / "tok-ray", log=lambda s: None)
    assert t_ray.manifest.metrics["engine"] == "ray"
    assert t_ray.manifest.files == t_local.manifest.files
    assert t_ray.manifest.counts == t_local.manifest.counts
    for split in ("train", "val", "test"):
        assert (t_ray.path / f"{split}.bin").read_bytes() == (t_local.path / f"{split}.bin").read_bytes()
        assert t_local.manifest.counts["tokens"][split] > 0


def _messy_corpus(root: Path) -> Path:
    """Every format, every problem the reader counts, and duplicates spread over files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    base = [prose(i, words=120) for i in range(60)]
    near = [t.replace(t.split()[3], "changed", 1) for t in base[:10]]  # one word changed: near duplicates
    write_jsonl(root / "a.jsonl", [{"text": t} for t in base[:30]] + [{"text": "tiny"}, {"other": "x"}, 7])
    (root / "a.jsonl").write_bytes((root / "a.jsonl").read_bytes() + b"{not json\n"
                                   + json.dumps({"text": prose(900)}).encode()[:-2] + b"\xff\xfe\"}\n")
    write_jsonl(root / "b.jsonl", [{"text": t} for t in base[20:45] + near[:5]])  # exact copies of a.jsonl's
    (root / "c.json").write_text(json.dumps([{"text": t} for t in base[40:50] + near[5:]], indent=1))
    (root / "d.txt").write_text("\n\n".join(base[50:55] + [base[0]]))
    (root / "e.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in base[55:]).encode()))
    (root / "f.jsonl.gz").write_bytes(b"not gzip at all")
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [prose(700), None, base[5]]}), buf)
    (root / "g.parquet").write_bytes(buf.getvalue())
    (root / "h.csv").write_text("a,b\n1,2\n")
    (root / "i.txt").write_bytes(b"\0binary")
    (root / "j.txt").write_text("   \n")
    sub = root / "sub"
    sub.mkdir()
    write_jsonl(sub / "k.jsonl", [{"text": t + "  "} for t in base[10:15]])  # equal after cleaning
    return root


@pytest.mark.parametrize("dedup, block_per_file", [(DedupConfig(), False), (DedupConfig(exact=False), False),
                                                   (DedupConfig(), True)],
                         ids=["exact+near", "near-only", "exact+near-block-per-file"])
def test_messy_corpus_same_dataset_counts_and_report(ray_runtime, tmp_path, monkeypatch, dedup, block_per_file):
    if block_per_file:  # sorts of many blocks (a large corpus's): buckets and ids cut by block edges
        monkeypatch.setattr(engine, "PARTITION_MIN_BYTES", 1)
    corpus = _messy_corpus(tmp_path / "messy")
    cfg = BuildConfig(sources=[str(corpus)], min_chars=10, txt_mode="paragraph", dedup=dedup,
                      split={"val": 0.2, "test": 0.2, "calibration": 0.1}, shard_max_bytes=2048)
    local, ray = _both(cfg, tmp_path, "messy")
    _assert_same_dataset(local, ray)
    counts = local.manifest.counts
    assert counts["documents"]["dropped"]["near_duplicate"] >= 8
    assert set(counts["files"]["skipped"]) >= {"binary", "corrupt_compressed", "empty", "unknown_format"}
    assert sum(len(s["shards"]) for s in counts["splits"].values()) > 4  # several shards per split
    if dedup.exact:
        assert counts["documents"]["dropped"]["exact_duplicate"] >= 15


def test_bad_record_with_fail_is_the_same_error_on_ray(ray_runtime, tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", [{"text": prose(1)}, {"no_text": 1}])
    cfg = BuildConfig(sources=[str(src)], bad_records="fail", engine="ray")
    with pytest.raises(BuildError, match=r"bad\.jsonl:2: an object without field 'text'"):
        build_dataset(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_clusters_are_resolved_by_the_local_rule_in_id_order():
    """A chain a~b~c (a and c too far apart): b goes, a and c stay, whatever the order the edges come in."""
    chain = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}
    assert drop_in_id_order(chain) == ["b"]
    assert drop_in_id_order(dict(reversed(chain.items()))) == ["b"]
    assert drop_in_id_order({"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b"}}) == ["b", "c"]


def test_near_duplicate_clusters_resolve_across_blocks_and_label_rounds(ray_runtime, monkeypatch):
    """A chain of five documents, each a near duplicate of its neighbours only, its smallest id at one end
    (four rounds of label propagation to the other), cut over blocks: the id-order rule keeps every other one."""
    import ray

    monkeypatch.setattr(engine, "PARTITION_MIN_BYTES", 1)  # every sort of as many blocks as its input
    rng = np.random.default_rng(0)
    cfg = DedupConfig()  # 8 LSH bands of 16 values, threshold 0.85

    def changed(sig: np.ndarray, band: int) -> np.ndarray:  # 10 values of one band: Jaccard 118/128 = 0.92
        out = sig.copy()
        out[band * 16:band * 16 + 10] = rng.integers(0, 2**32, 10, dtype=np.uint64)
        return out

    chain = [rng.integers(0, 2**32, 128, dtype=np.uint64)]
    for band in range(1, 5):  # two steps apart: 108/128 = 0.84, a candidate (shared bands) but no edge
        chain.append(changed(chain[-1], band))
    pair = [rng.integers(0, 2**32, 128, dtype=np.uint64)]
    pair.append(changed(pair[0], 0))
    lone = rng.integers(0, 2**32, 128, dtype=np.uint64)
    docs = [(f"p{4 - i}", s) for i, s in enumerate(chain)] + [("q0", pair[0]), ("q1", pair[1]), ("r", lone)]
    docs.append(docs[2])  # an exact copy (same id and signature) in another block
    sigs = signature_bytes(np.stack([s for _, s in docs]))
    with engine.data_context(RayDataConfig()):
        ds = ray.data.from_items([{"id": d, "sig": s} for (d, _), s in zip(docs, sigs)], override_num_blocks=4)
        ids, n_dropped, clusters = near_duplicate_ids(ds, cfg)
        dropped = sorted(r["id"] for r in ids.take_all())
    assert dropped == ["p1", "p3", "q1"] and n_dropped == 3
    assert clusters == 2


def test_tally_merged_per_file_equals_one_tally(monkeypatch):
    """Per-file tallies merged in file order give the sequential tally, report and per-file limits included."""
    monkeypatch.setattr(accounting, "REPORT_LIMIT", 5)
    monkeypatch.setattr(accounting, "PER_FILE_LIMIT", 2)
    events = [(f"f{i}", j) for i in range(4) for j in range(i + 2)]
    one, merged = Tally(), Tally()
    one.skip_path("link", "symlink", "not followed")
    merged.skip_path("link", "symlink", "not followed")
    parts: dict[str, Tally] = {}
    for uri, line in events:
        for t in (one, parts.setdefault(uri, Tally())):
            t.docs_read += 1
            t.drop_record(uri, "not_json", line, "bad")
    for uri in sorted(parts):
        merged.merge(parts[uri])
    assert merged.counts(kept=0) == one.counts(kept=0)
    assert one.report_omitted > 0 and one.per_file_omitted > 0


def test_auto_engine_is_ray_where_ray_address_is_set(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert [engine.resolve(e) for e in ("local", "ray", "auto")] == ["local", "ray", "local"]
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert engine.resolve("auto") == "ray" and engine.resolve("local") == "local"


def test_encode_ranges_cover_the_shard_and_end_at_line_ends(tmp_path):
    shard = tmp_path / "train-00000.jsonl"
    lines = [json.dumps({"text": prose(i, words=i % 7 + 1)}) + "\n" for i in range(200)]
    shard.write_text("".join(lines))
    data = shard.read_bytes()
    for block in (1, 100, 1000, len(data), 10 * len(data)):
        ranges = list(line_ranges(shard, block))
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(data[end - 1:end] == b"\n" for _, end in ranges)


def test_tokenizer_sample_is_a_bounded_prefix():
    texts = ["é" * 100] * 50  # 200 bytes of UTF-8 each
    assert list(training_sample(iter(texts), None)) == texts
    assert len(list(training_sample(iter(texts), 0.001))) == 5  # 1000 bytes: the fifth text reaches it
