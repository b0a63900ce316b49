import json

import pytest

from lmops.manifest import MANIFEST, ManifestError, read_manifest, run_stage, verify


def _produce(text: str, calls: list):
    def produce(out):
        calls.append(out)
        (out / "a.txt").write_text(text)
        (out / "sub").mkdir()
        (out / "sub" / "b.bin").write_bytes(b"\x00\x01")
        return {"counts": {"n": 2}, "metrics": {"m": 1.5}}

    return produce


def _run(out, text="hello", cfg=None, inputs=None, cache=None, calls=None):
    return run_stage("demo", out, code="c1", config=cfg or {"x": 1}, inputs=inputs or {"src": {"digest": "d1"}},
                     produce=_produce(text, calls if calls is not None else []), cache_dir=cache, log=lambda s: None)


def test_manifest_records_files_config_inputs(tmp_path):
    res = _run(tmp_path / "out")
    m = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert not res.cached
    assert m["stage"] == "demo" and m["config"] == {"x": 1} and m["inputs"]["src"]["digest"] == "d1"
    assert set(m["files"]) == {"a.txt", "sub/b.bin"}
    assert m["files"]["a.txt"]["bytes"] == 5
    assert m["counts"] == {"n": 2} and m["digest"] == res.manifest.digest
    assert verify(tmp_path / "out", "demo").key == res.manifest.key


def test_second_run_is_cached_and_changes_rerun(tmp_path):
    calls = []
    out = tmp_path / "out"
    _run(out, calls=calls)
    assert _run(out, calls=calls).cached
    assert not _run(out, cfg={"x": 2}, calls=calls).cached  # a parameter changed
    assert not _run(out, inputs={"src": {"digest": "d2"}}, calls=calls).cached  # an input changed
    assert len(calls) == 3


def test_paths_are_not_part_of_the_key(tmp_path):
    a = _run(tmp_path / "a", inputs={"src": {"digest": "d1", "path": "/x/old"}})
    cache = tmp_path / "cache"
    _run(tmp_path / "b", inputs={"src": {"digest": "d1", "path": "/y/new"}}, cache=cache)
    calls = []
    c = _run(tmp_path / "c", cache=cache, calls=calls)  # new output path, same key: from the cache
    assert c.cached and calls == []
    assert c.manifest.key == a.manifest.key


def test_edited_output_is_recomputed_not_trusted(tmp_path):
    out = tmp_path / "out"
    _run(out)
    (out / "a.txt").write_text("HELLO")
    with pytest.raises(ManifestError, match=r"a.txt: size|a.txt: sha256"):
        verify(out)
    calls = []
    assert not _run(out, calls=calls).cached and len(calls) == 1
    assert (out / "a.txt").read_text() == "hello"


def test_same_size_edit_is_caught_by_sha(tmp_path):
    out = tmp_path / "out"
    _run(out)
    (out / "a.txt").write_text("jello")
    with pytest.raises(ManifestError, match="sha256 .* differs"):
        verify(out, only=["a.txt"])


def test_failed_stage_leaves_previous_output_intact(tmp_path):
    out = tmp_path / "out"
    _run(out)

    def boom(d):
        (d / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_stage("demo", out, code="c1", config={"x": 9}, inputs={}, produce=boom, log=lambda s: None)
    assert (out / "a.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dirs left behind


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    with pytest.raises(ManifestError, match="not a finished stage output"):
        read_manifest(tmp_path / "half")
    _run(tmp_path / "out")
    with pytest.raises(ManifestError, match="expected the output of stage 'build'"):
        read_manifest(tmp_path / "out", stage="build")
    (tmp_path / "out" / "sub" / "b.bin").unlink()
    with pytest.raises(ManifestError, match="b.bin: listed in manifest.json but missing"):
        verify(tmp_path / "out")


# ---------------------------------------------------------------- each input hashed once per process
def test_a_second_verification_reads_nothing_again(tmp_path):
    from lmops.manifest import hashed_bytes

    out = tmp_path / "out"
    _run(out, text="x" * 100_000)
    verify(out)
    before = hashed_bytes()
    for _ in range(3):  # the cache key, then each reader: same files, no second pass
        verify(out)
    assert hashed_bytes() == before


def test_a_change_after_a_verification_is_still_caught(tmp_path):
    import os

    out = tmp_path / "out"
    _run(out, text="hello")
    verify(out)
    path = out / "a.txt"
    stat = path.stat()
    path.write_text("jello")  # same size, and the mtime put back: only ctime (which no one sets) moved
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ManifestError, match="sha256"):
        verify(out)


def test_hashes_handed_to_another_process_spare_it_the_pass(tmp_path):
    import subprocess
    import sys

    from lmops.manifest import remembered_hashes

    out = tmp_path / "out"
    _run(out, text="y" * 50_000)
    verify(out)
    script = ("import json, sys; from lmops.manifest import hashed_bytes, remember, verify;"
              "remember(json.loads(sys.stdin.read())); verify(sys.argv[1]); print(hashed_bytes())")
    child = subprocess.run([sys.executable, "-c", script, str(out)], input=json.dumps(remembered_hashes()),
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "0"
    alone = subprocess.run([sys.executable, "-c", script, str(out)], input="[]", capture_output=True, text=True,
                           check=True)
    assert int(alone.stdout) >= 50_000  # without them it hashes the files itself
