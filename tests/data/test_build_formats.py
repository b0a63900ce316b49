"""Stage 1 `build` reading the formats datasets ship in: .json (array, one object or JSON lines) and
.txt/.jsonl/.json compressed as .gz or .zst; corrupt ones are counted and named like any bad file."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import pytest
from build_inputs import all_texts, assert_accounted, build, cfg, prose, records

from lmops.data.sources import BadRecordError, BuildError


def _jsonl(*texts: str) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


@pytest.mark.parametrize("name, data, lines", [
    ("d.jsonl.gz", gzip.compress(_jsonl(prose(1), prose(2))), (1, 2)),
    ("d.json.gz", gzip.compress(("[\n" + json.dumps({"text": prose(1)}) + ",\n"
                                 + json.dumps({"text": prose(2)}) + "]").encode()), (2, 3)),
    ("d.txt.gz", gzip.compress(f"{prose(1)}\n\n{prose(2)}\n".encode()), (1, 3)),
    ("D.JSONL.GZ", gzip.compress(_jsonl(prose(1))) + gzip.compress(_jsonl(prose(2))), (1, 2)),  # two members
])
def test_gzip_compressed_sources_are_read(tmp_path, name, data, lines):
    (tmp_path / name).write_bytes(data)
    c = build(cfg(tmp_path / name, txt_mode="paragraph"), tmp_path / "out").manifest.counts
    assert all_texts(tmp_path / "out") == {prose(1), prose(2)}
    assert c["files"]["read"] == 1 and c["report"] == []
    assert c["files"]["bytes_read"] == len(data)  # bytes as stored
    sources = {r["source"] for recs in records(tmp_path / "out").values() for r in recs}
    assert sources == {f"{tmp_path / name}:{line}" for line in lines}


def test_json_array_records_follow_the_jsonl_rules_and_name_their_line(tmp_path):
    f = tmp_path / "d.json"
    f.write_text("[\n  {\"text\": " + json.dumps(prose(1)) + "},\n  {\"body\": \"x\"},\n"
                 "  {\"text\": 7},\n  {\n    \"text\": " + json.dumps(prose(2)) + "\n  }\n]\n")
    c = build(cfg(f), tmp_path / "out").manifest.counts
    assert all_texts(tmp_path / "out") == {prose(1), prose(2)}
    assert c["documents"] == {"read": 4, "kept": 2, "dropped": {"missing_field": 1, "not_string": 1}}
    assert [(p["file"], p["reason"]) for p in c["report"]] == [(f"{f}:3", "missing_field"), (f"{f}:4", "not_string")]
    sources = {r["source"] for recs in records(tmp_path / "out").values() for r in recs}
    assert sources == {f"{f}:2", f"{f}:5"}


def test_json_holding_one_object_or_json_lines(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"text": prose(1)}, indent=2))
    (tmp_path / "lines.json").write_bytes(_jsonl(prose(2), prose(3)) + b"{broken\n")
    c = build(cfg(tmp_path), tmp_path / "out").manifest.counts
    assert all_texts(tmp_path / "out") == {prose(1), prose(2), prose(3)}
    assert [(p["file"], p["reason"]) for p in c["report"]] == [(f"{tmp_path / 'lines.json'}:3", "not_json")]
    assert_accounted(c)


def test_invalid_json_array_is_skipped_and_named_or_fails(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text("[\n" + json.dumps({"text": prose(1)}) + ",\n{\"text\": oops}\n]")
    (tmp_path / "ok.jsonl").write_bytes(_jsonl(prose(2)))
    c = build(cfg(tmp_path), tmp_path / "out").manifest.counts
    assert c["files"]["skipped"] == {"invalid_json": 1} and c["documents"]["read"] == 1
    [problem] = c["report"]
    assert problem["file"] == str(f) and "line 3" in problem["detail"]
    with pytest.raises(BadRecordError, match=rf"{f}:3: not a valid JSON array.*build.bad_records=fail"):
        build(cfg(tmp_path, bad_records="fail"), tmp_path / "out2")


def test_corrupt_or_empty_compressed_files_are_skipped_and_named(tmp_path):
    whole = gzip.compress(_jsonl(*(prose(i) for i in range(50))))
    (tmp_path / "truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "plain.jsonl.gz").write_bytes(_jsonl(prose(60)))  # not compressed at all
    (tmp_path / "nothing.json.gz").write_bytes(gzip.compress(b"\n"))
    (tmp_path / "ok.jsonl").write_bytes(_jsonl(prose(61)))
    c = build(cfg(tmp_path), tmp_path / "out").manifest.counts
    assert c["files"]["skipped"] == {"corrupt_compressed": 2, "empty": 1}
    assert {p["file"]: p["reason"] for p in c["report"]} == {
        str(tmp_path / "truncated.jsonl.gz"): "corrupt_compressed", str(tmp_path / "plain.jsonl.gz"): "corrupt_compressed",
        str(tmp_path / "nothing.json.gz"): "empty"}
    assert all_texts(tmp_path / "out") == {prose(61)}


def _zst_file(tmp_path, data: bytes):
    """A .zst made by the zstd command where there is one (an independent writer), else by the package."""
    raw = tmp_path / "d.jsonl"
    if shutil.which("zstd") is None:
        import zstandard

        (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        raw.write_bytes(data)
        subprocess.run(["zstd", "-q", "--rm", str(raw)], check=True)
    return tmp_path / "d.jsonl.zst"


def test_zst_without_zstandard_is_a_clear_error(tmp_path, monkeypatch):
    """A missing package must stop the build, not skip: the same cache key would name another dataset."""
    f = _zst_file(tmp_path, _jsonl(prose(1)))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as when it is not installed: import fails
    with pytest.raises(BuildError, match=rf"{f}: reading .zst needs the Python package 'zstandard'"):
        build(cfg(f), tmp_path / "out")


def test_zst_is_read_with_zstandard(tmp_path):
    pytest.importorskip("zstandard", reason="zstandard is optional; without it .zst is a clear error")
    f = _zst_file(tmp_path, _jsonl(prose(1), prose(2)))
    (tmp_path / "cut.jsonl.zst").write_bytes(f.read_bytes()[:20])
    c = build(cfg(tmp_path), tmp_path / "out").manifest.counts
    assert all_texts(tmp_path / "out") == {prose(1), prose(2)}
    assert [(p["file"], p["reason"]) for p in c["report"]] == [(str(tmp_path / "cut.jsonl.zst"), "corrupt_compressed")]


def test_compressed_and_json_sources_on_s3(s3, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="raw/a.jsonl.gz", Body=gzip.compress(_jsonl(prose(1))))
    client.put_object(Bucket=bucket, Key="raw/b.json", Body=json.dumps([{"text": prose(2)}]).encode())
    client.put_object(Bucket=bucket, Key="raw/c.json.gz", Body=b"not gzip")
    c = build(cfg(f"s3://{bucket}/raw/"), tmp_path / "out").manifest.counts
    assert all_texts(tmp_path / "out") == {prose(1), prose(2)}
    assert [(p["file"], p["reason"]) for p in c["report"]] == [(f"s3://{bucket}/raw/c.json.gz", "corrupt_compressed")]
