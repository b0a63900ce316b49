"""Stage 1 `build`: formats, cleaning, dedup, split, shards, accounting, caching and S3 sources.

Bad inputs are in test_build_bad_inputs.py; the synthetic inputs come from build_inputs.py.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from build_inputs import all_texts, assert_accounted, build, cfg, prose, records, write_jsonl

from lmops.config import DedupConfig, SplitConfig
from lmops.data.build import build_dataset
from lmops.data.clean import clean_text, text_id
from lmops.data.dataset import iter_records, open_dataset
from lmops.manifest import ManifestError


# ---------------------------------------------------------------- formats
def test_txt_file_mode_and_paragraph_mode(tmp_path):
    paras = [prose(i) for i in range(3)]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(f"{paras[0]}\n\n  \n{paras[1]}\nsecond line\n\n\n{paras[2]}\n")

    whole = build(cfg(src), tmp_path / "file").manifest.counts
    assert whole["documents"] == {"read": 1, "kept": 1, "dropped": {}}

    res = build(cfg(src, txt_mode="paragraph"), tmp_path / "para")
    assert res.manifest.counts["documents"]["kept"] == 3
    by_text = {r["text"]: r["source"] for recs in records(tmp_path / "para").values() for r in recs}
    assert by_text[paras[0]] == f"{src / 'a.txt'}:1"
    assert by_text[f"{paras[1]}\nsecond line"] == f"{src / 'a.txt'}:4"
    assert by_text[paras[2]] == f"{src / 'a.txt'}:8"


def test_jsonl_with_configured_field(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"body": prose(1), "text": "ignored"}, {"body": prose(2)}])
    res = build(cfg(f, jsonl_field="body"), tmp_path / "out")
    assert all_texts(tmp_path / "out") == {prose(1), prose(2)}
    sources = {r["source"] for recs in records(tmp_path / "out").values() for r in recs}
    assert sources == {f"{f}:1", f"{f}:2"}
    assert_accounted(res.manifest.counts)


def test_one_progress_line_per_phase_with_its_rates_and_the_phase_times_in_the_manifest(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": prose(i)} for i in range(20)] + [{"text": prose(3)}])
    lines: list[str] = []
    res = build_dataset(cfg(f), tmp_path / "out", log=lines.append)
    phases = ["read_clean", "exact_dedup", "near_dedup", "split_write"]
    progress = [line for line in lines if line.startswith("[build] local: ")]
    assert [line.split()[2] for line in progress] == phases, lines
    assert all(" docs/s, " in line and " MB/s" in line for line in progress), progress
    assert "1 exact duplicate(s)" in progress[1]
    assert list(res.manifest.metrics["phase_seconds"]) == phases


def test_parquet_column_and_null_rows(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": [prose(1), None, prose(3)], "n": [1, 2, 3]}), f)
    res = build(cfg(f, parquet_column="content"), tmp_path / "out")
    assert all_texts(tmp_path / "out") == {prose(1), prose(3)}
    c = res.manifest.counts
    assert c["documents"]["dropped"] == {"missing_field": 1}
    assert {"file": f"{f}:2", "reason": "missing_field", "detail": "column 'content' is null"} in c["report"]

    other = tmp_path / "o"
    other.mkdir()
    pq.write_table(pa.table({"body": [prose(4)]}), other / "x.parquet")
    (other / "keep.txt").write_text(prose(5))
    c = build(cfg(other), tmp_path / "out2").manifest.counts
    assert c["files"]["skipped"] == {"missing_column": 1}
    assert "no column 'text'" in c["report"][0]["detail"]


# ---------------------------------------------------------------- cleaning
def test_clean_text_normalizes_unicode_controls_and_whitespace():
    assert clean_text("Cafe\u0301") == "Caf\u00e9"  # NFD -> NFC
    assert clean_text("a\x00b\x07c\x1b[0m\ufeff") == "abc[0m"
    assert clean_text("line one\r\nline two\rthree") == "line one\nline two\nthree"
    assert clean_text("  a \t\t b  \n   c\u00a0\u00a0d   ") == "a b\nc d"
    assert clean_text("p1\n\n\n\n \n\np2") == "p1\n\np2"
    assert clean_text("keep\ttab") == "keep tab"  # tabs are horizontal whitespace: collapsed to one space
    assert clean_text("e\x00\u0301") == "\u00e9"  # a control between letter and mark must not block NFC
    assert clean_text(" \n\t\x00 ") == ""


def test_build_stores_cleaned_text_with_id_of_it(tmp_path):
    (tmp_path / "a.txt").write_text("  Cafe\u0301   au  lait\r\n\r\n\r\n\r\nis \x07 served hot  \n")
    build(cfg(tmp_path / "a.txt"), tmp_path / "out")
    [rec] = [r for recs in records(tmp_path / "out").values() for r in recs]
    assert rec["text"] == "Caf\u00e9 au lait\n\nis served hot"
    assert rec["id"] == text_id(rec["text"])


# ---------------------------------------------------------------- dedup
def test_exact_duplicates_after_normalization_keep_one_copy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "b.txt").write_text(prose(1))
    (src / "a.txt").write_text("  " + prose(1).replace(" ", "   ") + "\n\n")  # same after cleaning
    (src / "c.txt").write_text(prose(2))
    c = build(cfg(src), tmp_path / "out").manifest.counts
    assert c["documents"]["dropped"] == {"exact_duplicate": 1}
    kept = {r["text"]: r["source"] for recs in records(tmp_path / "out").values() for r in recs}
    assert kept[prose(1)] == str(src / "a.txt")  # the smallest source name wins, whatever the order


def test_near_duplicate_with_one_word_changed_is_dropped(tmp_path):
    base = prose(7, words=200).split()
    variant = base.copy()
    variant[100] = "completelydifferent"
    rows = [{"text": " ".join(base)}, {"text": " ".join(variant)}, {"text": prose(8, words=200)}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    c = build(cfg(f), tmp_path / "out").manifest.counts
    assert c["documents"]["dropped"] == {"near_duplicate": 1}
    texts = all_texts(tmp_path / "out")
    assert prose(8, words=200) in texts
    assert len(texts & {" ".join(base), " ".join(variant)}) == 1
    # with near-dedup off (or a threshold above their similarity) both stay
    assert build(cfg(f, dedup=DedupConfig(near=False)), tmp_path / "o2").manifest.counts["documents"]["kept"] == 3
    assert build(cfg(f, dedup=DedupConfig(threshold=0.99)), tmp_path / "o3").manifest.counts["documents"]["kept"] == 3


def test_near_dedup_keeps_the_same_copy_whatever_the_file_order(tmp_path):
    groups = []
    for g in range(20):
        words = prose(100 + g, words=400).split()  # copies differ in 2 words: Jaccard ~0.95
        copies = []
        for k in range(3):
            w = words.copy()
            w[10 + 100 * k] = f"variant{k}"
            copies.append(" ".join(w))
        groups.append(copies)
    docs = [d for g in groups for d in g]
    outs = []
    for trial, seed in enumerate((1, 2)):
        src = tmp_path / f"src{trial}"
        src.mkdir()
        random.Random(seed).shuffle(docs)
        for i in range(0, len(docs), 7):
            write_jsonl(src / f"{seed}-{i}.jsonl", [{"text": d} for d in docs[i:i + 7]])
        c = build(cfg(src), tmp_path / f"out{trial}").manifest.counts
        assert c["documents"]["kept"] == 20 and c["documents"]["dropped"] == {"near_duplicate": 40}
        outs.append(all_texts(tmp_path / f"out{trial}"))
    assert outs[0] == outs[1]


def test_parallel_signatures_equal_serial_ones(monkeypatch):
    import numpy as np

    from lmops.data import dedup

    monkeypatch.setattr(dedup, "PARALLEL_MIN_DOCS", 0)  # force the pool on a small input
    texts = [prose(i, words=30) for i in range(3 * dedup.CHUNK_DOCS // 2)]
    serial = np.concatenate(list(dedup.all_signatures(texts, DedupConfig(), workers=1)))
    parallel = np.concatenate(list(dedup.all_signatures(texts, DedupConfig(), workers=2)))
    assert serial.shape == (len(texts), 128) and np.array_equal(serial, parallel)


# ---------------------------------------------------------------- split and shards
def _split_view(out: Path) -> dict:
    """Everything in the shards except the source names (they differ when files are laid out differently)."""
    m = open_dataset(out)
    return {s: {"shards": v["shards"], "records": [(r["id"], r["text"]) for r in iter_records(out, s, m)]}
            for s, v in m.counts["splits"].items()}


def test_split_is_independent_of_file_order_and_count(tmp_path):
    docs = [prose(i) for i in range(600)]
    split = SplitConfig(val=0.2, test=0.1, calibration=0.05)
    views = []
    for trial, (seed, per_file) in enumerate(((1, 600), (2, 37), (3, 1))):
        src = tmp_path / f"src{trial}"
        src.mkdir()
        shuffled = docs.copy()
        random.Random(seed).shuffle(shuffled)
        for i in range(0, len(shuffled), per_file):
            write_jsonl(src / f"part-{seed}-{i:04d}.jsonl", [{"text": d} for d in shuffled[i:i + per_file]])
        build(cfg(src, split=split, shard_max_bytes=8192), tmp_path / f"out{trial}")
        views.append(_split_view(tmp_path / f"out{trial}"))
    assert views[0] == views[1] == views[2]
    sizes = {s: len(v["records"]) for s, v in views[0].items()}
    assert set(sizes) == {"train", "val", "test", "calibration"}
    assert 80 < sizes["val"] < 160 and 30 < sizes["test"] < 90 and 10 < sizes["calibration"] < 55
    assert sum(sizes.values()) == 600
    # a different salt draws a different split
    build(cfg(tmp_path / "src0", split=split.model_copy(update={"salt": "other"})), tmp_path / "salted")
    assert _split_view(tmp_path / "salted")["val"]["records"] != views[0]["val"]["records"]


def test_same_files_in_a_new_order_give_identical_shard_bytes(tmp_path):
    docs = [prose(i) for i in range(50)]
    outs = []
    for trial in range(2):
        src = tmp_path / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        order = list(range(5)) if trial == 0 else [3, 0, 4, 1, 2]  # creation order differs
        for i in order:
            write_jsonl(src / f"f{i}.jsonl", [{"text": d} for d in docs[i * 10:(i + 1) * 10]])
        out = tmp_path / f"out{trial}"
        build(cfg(src), out)
        outs.append({p.name: p.read_bytes() for p in out.glob("*.jsonl")})
    assert outs[0] == outs[1]


def test_shards_respect_the_size_cap(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": prose(i, words=30)} for i in range(200)])
    res = build(cfg(f, shard_max_bytes=2048, split=SplitConfig(val=0.1, test=0.1)), tmp_path / "out")
    splits = res.manifest.counts["splits"]
    assert len(splits["train"]["shards"]) > 5
    on_disk = sorted(p.name for p in (tmp_path / "out").glob("*.jsonl"))
    assert on_disk == sorted(s for v in splits.values() for s in v["shards"])
    for name in on_disk:
        assert (tmp_path / "out" / name).stat().st_size <= 2048
    for split, v in splits.items():
        assert v["shards"] == [f"{split}-{i:05d}.jsonl" for i in range(len(v["shards"]))]
        assert v["bytes"] == sum((tmp_path / "out" / s).stat().st_size for s in v["shards"])
    assert len(all_texts(tmp_path / "out")) == 200


# ---------------------------------------------------------------- accounting
def test_every_document_and_file_is_accounted_for(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "a.jsonl", [{"text": prose(1)}, {"text": "short"}, {"text": "x" * 500},
                                  {"text": prose(1)}, {"nope": 1}, {"text": "   \n "}])
    (src / "b.txt").write_text(prose(2))
    (src / "empty.txt").write_text("")
    (src / "blob.txt").write_bytes(b"\x00\x01binary" * 10)
    (src / "notes.md").write_text(prose(3))
    res = build(cfg(src, max_chars=400), tmp_path / "out")
    c = res.manifest.counts
    assert_accounted(c)
    assert c["documents"]["read"] == 7 and c["documents"]["kept"] == 2
    assert c["documents"]["dropped"] == {"exact_duplicate": 1, "missing_field": 1, "too_short": 1,
                                         "too_long": 1, "empty": 1}
    assert c["files"]["seen"] == 5 and c["files"]["read"] == 2
    assert c["files"]["skipped"] == {"binary": 1, "empty": 1, "unknown_format": 1}
    # the length and emptiness filters name their record like every other drop; dedup is by design
    assert c["problems_per_file"][str(src / "a.jsonl")] == {"missing_field": 1, "too_short": 1, "too_long": 1,
                                                            "empty": 1}
    m = res.manifest.metrics
    assert m["input_mb"] > 0 and m["mb_per_s"] > 0 and m["seconds"] > 0


# ---------------------------------------------------------------- caching
def test_cache_follows_content_not_paths(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(prose(1))
    write_jsonl(src / "b.jsonl", [{"text": prose(2)}, {"text": prose(3)}])
    out = tmp_path / "out"
    first = build(cfg(src), out)
    assert not first.cached
    assert build(cfg(src), out).cached

    (src / "a.txt").rename(src / "renamed.txt")
    assert build(cfg(src), out).cached  # same content under another name
    moved = tmp_path / "elsewhere"
    src.rename(moved)
    assert build(cfg(moved), out).cached  # the whole corpus moved: sources are not part of the key

    (moved / "renamed.txt").write_text(prose(1)[:-1] + "!")  # one byte changed
    again = build(cfg(moved), out)
    assert not again.cached and again.manifest.key != first.manifest.key
    assert build(cfg(moved), out).cached
    assert not build(cfg(moved, min_chars=11), out).cached  # a config value changed

    files = again.manifest.inputs["sources"]["files"]
    assert [f["uri"] for f in files] == [str(moved / "b.jsonl"), str(moved / "renamed.txt")]
    assert all(f["content"].startswith("sha256:") and f["bytes"] > 0 for f in files)


def test_cache_dir_serves_a_new_output_path(tmp_path):
    (tmp_path / "a.txt").write_text(prose(1))
    c = cfg(tmp_path / "a.txt")
    assert not build(c, tmp_path / "run1" / "dataset", cache_dir=tmp_path / "cache").cached
    res = build(c, tmp_path / "run2" / "dataset", cache_dir=tmp_path / "cache")
    assert res.cached and all_texts(tmp_path / "run2" / "dataset") == {prose(1)}


def test_edited_output_is_rejected_by_readers_and_rebuilt(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": prose(i)} for i in range(20)])
    out = tmp_path / "out"
    res = build(cfg(tmp_path / "d.jsonl"), out)
    shard = out / res.manifest.counts["splits"]["train"]["shards"][0]
    shard.write_text(shard.read_text().replace("a", "b", 1))
    with pytest.raises(ManifestError, match="train-00000.jsonl"):
        open_dataset(out)
    again = build(cfg(tmp_path / "d.jsonl"), out)
    assert not again.cached  # recomputed rather than trusted
    open_dataset(out)
    assert shard.read_bytes() != b"" and again.manifest.files == res.manifest.files


# ---------------------------------------------------------------- S3
def test_build_from_an_s3_prefix(s3, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="raw/a.txt", Body=prose(1).encode())
    client.put_object(Bucket=bucket, Key="raw/sub/b.jsonl",
                      Body=(json.dumps({"text": prose(2)}) + "\n" + json.dumps({"text": prose(3)}) + "\n").encode())
    client.put_object(Bucket=bucket, Key="raw/empty.txt", Body=b"")
    client.put_object(Bucket=bucket, Key="rawish/c.txt", Body=prose(4).encode())  # not under raw/
    c = cfg(f"s3://{bucket}/raw/")
    out = tmp_path / "out"
    res = build(c, out)
    assert all_texts(out) == {prose(1), prose(2), prose(3)}
    counts = res.manifest.counts
    assert counts["files"]["skipped"] == {"empty": 1} and counts["documents"]["kept"] == 3
    files = res.manifest.inputs["sources"]["files"]
    assert {f["uri"] for f in files} == {f"s3://{bucket}/raw/a.txt", f"s3://{bucket}/raw/sub/b.jsonl",
                                         f"s3://{bucket}/raw/empty.txt"}
    assert all(f["content"].startswith("etag:") for f in files)
    sources = {r["source"] for recs in records(out).values() for r in recs}
    assert f"s3://{bucket}/raw/sub/b.jsonl:2" in sources

    assert build(c, out).cached
    client.put_object(Bucket=bucket, Key="raw/a.txt", Body=prose(5).encode())
    assert not build(c, out).cached
    assert prose(5) in all_texts(out) and prose(1) not in all_texts(out)
