"""Stage 1 `build` on bad input: every case is either a clear error naming the file[:line] and the
config key, or a skip/drop that is counted in the manifest and listed in its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from build_inputs import all_texts, assert_accounted, build, cfg, prose

from lmops.data.sources import BadRecordError, BuildError
from lmops.storage import StorageError


def test_missing_s3_prefix_is_a_clear_error(s3, tmp_path):
    _, bucket = s3
    with pytest.raises(StorageError, match=f"s3://{bucket}/nothing/"):
        build(cfg(f"s3://{bucket}/nothing/"), tmp_path / "out")


# ---------------------------------------------------------------- bad inputs
def test_missing_path_names_it(tmp_path):
    (tmp_path / "ok.txt").write_text(prose(1))
    with pytest.raises(StorageError, match="no-such-dir"):
        build(cfg(tmp_path / "ok.txt", tmp_path / "no-such-dir"), tmp_path / "out")
    with pytest.raises(StorageError, match=r"\*\.nothing"):
        build(cfg(tmp_path / "*.nothing"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Run first in the child: give up CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (bits 1, 2) in its own effective,
# permitted and inheritable sets (capset: lowering one's own sets needs no privilege, unlike dropping them from
# the bounding set, which needs CAP_SETPCAP), so that root too obeys file modes. The build then runs in this
# same process: an exec as root would get the capabilities back. For a non-root user nothing changes.
WITHOUT_DAC_OVERRIDE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
sets = (ctypes.c_uint32 * 6)()  # {effective, permitted, inheritable} for capabilities 0-31, then 32-63
if libc.capget(header, sets) != 0:
    raise OSError(ctypes.get_errno(), "capget")
for i in range(3):
    sets[i] &= ~0b110
if libc.capset(header, sets) != 0:
    raise OSError(ctypes.get_errno(), "capset")
"""


BUILD_SCRIPT = """
import json, sys
from lmops.config import BuildConfig
from lmops.data.build import build_dataset
res = build_dataset(BuildConfig(sources=[sys.argv[1]], min_chars=10), sys.argv[2], log=lambda s: None)
print(json.dumps(res.manifest.counts))
"""


def _build_with_locked(src: Path, locked: Path, out: Path) -> dict:
    """Build ``src`` while ``locked`` is chmod 000; returns the manifest counts.

    chmod 000 does not stop root, so the build runs in a child process that has first given up the
    capabilities that bypass file permissions: a real permission error for root and non-root alike."""
    mode = locked.stat().st_mode
    locked.chmod(0)
    try:
        cmd = [sys.executable, "-c", WITHOUT_DAC_OVERRIDE + BUILD_SCRIPT, str(src), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(mode)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_unreadable_file_is_skipped_and_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text(prose(1))
    locked = src / "locked.txt"
    locked.write_text(prose(2))
    counts = _build_with_locked(src, locked, tmp_path / "out")
    assert counts["files"]["skipped"] == {"unreadable": 1}
    [problem] = counts["report"]
    assert problem["file"] == str(locked) and problem["reason"] == "unreadable"
    assert "permission denied" in problem["detail"].lower()
    assert counts["documents"]["kept"] == 1


def test_unlistable_directory_is_counted_and_named(tmp_path):
    src = tmp_path / "src"
    locked = src / "locked"
    locked.mkdir(parents=True)
    (locked / "a.txt").write_text(prose(2))
    (src / "ok.txt").write_text(prose(1))
    counts = _build_with_locked(src, locked, tmp_path / "out")
    assert counts["files"]["paths_skipped"] == {"unlistable": 1}
    assert counts["files"]["seen"] == 1 and counts["documents"]["kept"] == 1
    [problem] = counts["report"]
    assert problem["file"] == str(locked) and problem["reason"] == "unlistable"
    assert "permission denied" in problem["detail"].lower()


BAD_UTF8 = b"caf\xe9 au lait, " + prose(1).encode() + b" \xff\xfe end"


def test_invalid_utf8_replace_counts_per_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.txt").write_bytes(BAD_UTF8)
    (src / "bad.jsonl").write_bytes(b'{"text": "' + prose(2).encode() + b' \xc3("}\n'
                                    + json.dumps({"text": prose(3) + " \ud800 lone"}).encode() + b"\n")
    (src / "good.txt").write_text("already has \ufffd literally, " + prose(4))
    c = build(cfg(src), tmp_path / "out").manifest.counts
    assert c["documents"]["kept"] == 4 and c["documents"]["dropped"] == {}
    assert c["files"]["invalid_utf8_replaced"] == {"files": 2, "sequences": 5}  # \xff and \xfe are two
    per_file = c["problems_per_file"]
    assert per_file[str(src / "bad.txt")] == {"invalid_utf8_replaced": 3}
    assert per_file[str(src / "bad.jsonl")] == {"invalid_utf8_replaced": 2}
    assert str(src / "good.txt") not in per_file  # a real U+FFFD in valid text is not a replacement
    assert {"file": f"{src / 'bad.jsonl'}:1", "reason": "invalid_utf8_replaced"} in c["report"]
    texts = all_texts(tmp_path / "out")
    assert any(t.startswith("caf\ufffd au lait") and t.endswith("\ufffd\ufffd end") for t in texts)


def test_invalid_utf8_drop_drops_file_or_record(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.txt").write_bytes(BAD_UTF8)
    (src / "mixed.jsonl").write_bytes(json.dumps({"text": prose(2)}).encode() + b"\n"
                                      + b'{"text": "' + prose(3).encode() + b' \xc3("}\n')
    c = build(cfg(src, invalid_utf8="drop"), tmp_path / "out").manifest.counts
    assert c["files"]["skipped"] == {"invalid_utf8": 1}
    assert c["documents"]["dropped"] == {"invalid_utf8": 1} and c["documents"]["kept"] == 1
    reports = {(p["file"], p["reason"]) for p in c["report"]}
    assert reports == {(str(src / "bad.txt"), "invalid_utf8"), (f"{src / 'mixed.jsonl'}:2", "invalid_utf8")}
    assert all_texts(tmp_path / "out") == {prose(2)}


def test_empty_and_binary_files_are_skipped_and_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.txt").write_bytes(b"")
    (src / "blank.jsonl").write_text("\n  \n")
    (src / "image.txt").write_bytes(bytes(range(256)) * 4)
    (src / "utf16.jsonl").write_text(json.dumps({"text": prose(9)}), encoding="utf-16")
    (src / "ok.txt").write_text(prose(1))
    c = build(cfg(src), tmp_path / "out").manifest.counts
    assert c["files"]["skipped"] == {"binary": 2, "empty": 2}
    assert {p["file"] for p in c["report"]} == {str(src / n) for n in ("empty.txt", "blank.jsonl", "image.txt",
                                                                         "utf16.jsonl")}
    assert_accounted(c)


BAD_LINES = [json.dumps({"text": "placeholder"}), "{not json", json.dumps({"other": "x"}),
             json.dumps(["a", "list"]), json.dumps({"text": 42}), ""]


def _bad_jsonl(path: Path) -> Path:
    lines = BAD_LINES.copy()
    lines[0] = json.dumps({"text": prose(1)})
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_jsonl_lines_skip_mode_reports_file_and_line(tmp_path):
    f = _bad_jsonl(tmp_path / "d.jsonl")
    c = build(cfg(f), tmp_path / "out").manifest.counts
    assert c["documents"] == {"read": 5, "kept": 1,
                              "dropped": {"not_json": 1, "missing_field": 2, "not_string": 1}}
    assert [(p["file"], p["reason"]) for p in c["report"]] == [
        (f"{f}:2", "not_json"), (f"{f}:3", "missing_field"), (f"{f}:4", "missing_field"), (f"{f}:5", "not_string")]
    assert "'text'" in c["report"][1]["detail"]


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "not JSON"), (json.dumps({"other": "x"}), "without field 'body'"),
    (json.dumps({"body": None}), "expected a string"),
])
def test_bad_jsonl_line_fail_mode_names_file_and_line(tmp_path, bad_line, message):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"body": prose(1)}) + "\n\n" + bad_line + "\n")
    with pytest.raises(BadRecordError, match=rf"{f}:3: .*{message}.*build.bad_records=fail"):
        build(cfg(f, bad_records="fail", jsonl_field="body"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nothing_kept_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("tiny")
    (tmp_path / "b.bin.txt").write_bytes(b"\x00" * 10)
    with pytest.raises(BuildError, match=r"nothing kept.*too_short.*build.min_chars"):
        build(cfg(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_length_and_emptiness_filters_name_file_and_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                         for t in [prose(1), "tiny", "   \n ", "y" * 500]))
    (src / "short.txt").write_text("hi")
    c = build(cfg(src, max_chars=400), tmp_path / "out").manifest.counts
    assert c["documents"]["dropped"] == {"too_short": 2, "empty": 1, "too_long": 1}
    named = {p["file"]: p["reason"] for p in c["report"]}
    assert named == {f"{src / 'd.jsonl'}:2": "too_short", f"{src / 'd.jsonl'}:3": "empty",
                     f"{src / 'd.jsonl'}:4": "too_long", str(src / "short.txt"): "too_short"}
    assert "build.max_chars=400" in next(p["detail"] for p in c["report"] if p["reason"] == "too_long")


# ---------------------------------------------------------------- through the CLI: one line, exit 2
def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    lmops = Path(sys.executable).with_name("lmops")  # the installed entry point
    return subprocess.run([str(lmops), "build", "--out", str(tmp_path / "out"),
                           "--set", f"cache_dir={tmp_path / 'cache'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_nothing_kept_is_one_line_and_exit_2(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "table.csv").write_text("a,b\n1,2\n")
    proc = _cli("--set", f"build.sources=['{src}']", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("lmops build: error: nothing kept") and f"{src / 'table.csv'}: unknown_format" in line


def test_cli_bad_record_with_fail_is_one_line_and_exit_2(tmp_path, capsys):
    from lmops.cli import main

    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": prose(1)}) + "\n{oops\n")
    code = main(["build", "--out", str(tmp_path / "out"), "--set", f"cache_dir={tmp_path / 'cache'}",
                 "--set", f"build.sources=['{f}']", "--set", "build.bad_records=fail"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == err.strip().splitlines()[0]
    assert err.startswith(f"lmops build: error: {f}:2: not JSON") and "build.bad_records=fail" in err
