"""Stage 1 `build` listing local sources: symlinked directories are read once, and every path passed
over (dangling or looping link, hidden or duplicate directory) is counted and named in the report."""

from __future__ import annotations

import os

import pytest
from build_inputs import all_texts, assert_accounted, build, cfg, prose


def _named(counts: dict) -> dict[str, str]:
    return {p["file"]: p["reason"] for p in counts["report"]}


def test_symlinked_subdirectory_is_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.txt").write_text(prose(1))
    src = tmp_path / "src"
    src.mkdir()
    (src / "own.txt").write_text(prose(2))
    (src / "more").symlink_to(outside, target_is_directory=True)
    res = build(cfg(src), tmp_path / "out")
    assert all_texts(tmp_path / "out") == {prose(1), prose(2)}
    assert str(src / "more" / "linked.txt") in {f["uri"] for f in res.manifest.inputs["sources"]["files"]}
    c = res.manifest.counts
    assert c["files"]["paths_skipped"] == {} and c["report"] == []


def test_symlink_loops_and_dangling_links_are_counted_and_named(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text(prose(1))
    (src / "sub" / "up").symlink_to("..", target_is_directory=True)  # a loop: src/sub/up/sub/up/...
    (src / "also-sub").symlink_to("sub", target_is_directory=True)  # the same directory twice
    (src / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    (src / "self").symlink_to("self")  # a link to itself: ELOOP
    res = build(cfg(src), tmp_path / "out")
    c = res.manifest.counts
    assert all_texts(tmp_path / "out") == {prose(1)}
    assert c["documents"]["read"] == 1  # read once, not once per path through the loop
    assert c["files"]["paths_skipped"] == {"dangling_symlink": 1, "duplicate_dir": 1, "symlink_loop": 2}
    assert _named(c) == {str(src / "sub" / "up"): "symlink_loop", str(src / "also-sub"): "duplicate_dir",
                         str(src / "gone.txt"): "dangling_symlink", str(src / "self"): "symlink_loop"}
    details = {p["file"]: p["detail"] for p in c["report"]}
    assert str(src) in details[str(src / "sub" / "up")] and str(src / "sub") in details[str(src / "also-sub")]
    assert "deleted.txt" in details[str(src / "gone.txt")]
    assert_accounted(c)


def test_a_glob_through_a_symlink_loop_lists_each_file_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(prose(1))
    (src / "loop").symlink_to(".", target_is_directory=True)
    (src / "notes.md").write_text(prose(2))  # not matched by the glob: neither read nor reported
    c = build(cfg(src / "**" / "*.txt"), tmp_path / "out").manifest.counts
    assert c["files"]["seen"] == 1 and c["documents"]["read"] == 1
    assert _named(c) == {str(src / "loop"): "symlink_loop"}


def test_hidden_directories_are_skipped_and_named(tmp_path):
    src = tmp_path / "src"
    (src / ".git" / "objects").mkdir(parents=True)
    (src / ".git" / "objects" / "pack.txt").write_text(prose(1))
    (src / ".git" / "HEAD.txt").write_text(prose(2))
    (src / ".DS_Store").write_bytes(b"\0meta")
    (src / "doc.txt").write_text(prose(3))
    c = build(cfg(src), tmp_path / "out").manifest.counts
    assert all_texts(tmp_path / "out") == {prose(3)}
    assert c["files"]["paths_skipped"] == {"hidden_dir": 1, "hidden_file": 1}
    assert _named(c) == {str(src / ".git"): "hidden_dir"}  # dot files are counted, not listed one by one


def test_unlistable_directory_is_counted_and_named(tmp_path, monkeypatch):
    """The OS refusing to list one directory (what chmod 000 does for a non-root user; root is never
    refused, so the refusal is simulated at os.scandir; test_build_bad_inputs has the real one)."""
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "hidden-from-us.txt").write_text(prose(1))
    (src / "ok.txt").write_text(prose(2))
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(src / "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    c = build(cfg(src), tmp_path / "out").manifest.counts
    assert c["files"]["paths_skipped"] == {"unlistable": 1}
    [problem] = c["report"]
    assert problem["file"] == str(src / "locked") and problem["reason"] == "unlistable"
    assert "Permission denied" in problem["detail"]
    assert c["documents"]["kept"] == 1


def test_a_directory_of_only_passed_over_paths_is_not_a_typo(tmp_path):
    """Something is there, so the error is "nothing kept" and names why, not "no such directory"."""
    from lmops.data.sources import BuildError

    src = tmp_path / "src"
    (src / ".cache").mkdir(parents=True)
    (src / ".cache" / "a.txt").write_text(prose(1))
    with pytest.raises(BuildError, match=rf"nothing kept.*hidden_dir.*{src / '.cache'}: hidden_dir"):
        build(cfg(src), tmp_path / "out")
