"""The sample corpus: real prose from the standard library, deterministic, reused once made."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from lmops.config import BuildConfig
from lmops.data.build import build_dataset
from lmops.data.dataset import iter_texts, open_dataset
from lmops.data.sample_corpus import MARKER, make_sample_corpus

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_sample_corpus(tmp_path_factory.mktemp("sample") / "corpus")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_corpus_is_a_few_mb_of_stdlib_prose(corpus):
    files = sorted(corpus.glob("*.jsonl"))
    assert len(files) >= 3
    assert sum(f.stat().st_size for f in files) > 4_000_000
    records = [r for f in files for r in _lines(f)]
    assert all(set(r) == {"text", "source"} and r["text"].strip() for r in records)
    by_source = {r["source"]: r["text"] for r in records}
    # spot checks against the real library, not against our own output
    assert by_source["json/__init__.py:dumps"].startswith("Serialize ``obj`` to a JSON formatted ``str``.")
    assert any(s.startswith("pydoc_data/topics.py:") for s in by_source)
    assert any(":" in s and s.split(":")[1].isdigit() for s in by_source)  # comment blocks: file:line
    words = " ".join(r["text"] for r in records[:2000]).split()
    assert sum(w.lower() in {"the", "a", "of", "to", "is"} for w in words) / len(words) > 0.05  # English


def test_existing_corpus_is_reused(corpus):
    marker = json.loads((corpus / MARKER).read_text())
    assert set(marker["files"]) == {f.name for f in corpus.glob("*.jsonl")}
    before = {f.name: f.stat().st_mtime_ns for f in corpus.glob("*.jsonl")}
    assert make_sample_corpus(corpus) == corpus
    assert {f.name: f.stat().st_mtime_ns for f in corpus.glob("*.jsonl")} == before


def test_corpus_bytes_do_not_depend_on_directory_order(tmp_path):
    """Two copies of a slice of the stdlib, created in opposite orders, give byte-identical corpora."""
    picks = ["json", "email/mime", "pydoc_data"]
    outputs = []
    for trial, order in enumerate((picks, picks[::-1])):
        root = tmp_path / f"lib{trial}"
        for rel in order:
            shutil.copytree(STDLIB / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__"))
        out = make_sample_corpus(tmp_path / f"corpus{trial}", stdlib=root)
        outputs.append({f.name: f.read_bytes() for f in out.glob("*.jsonl")})
    assert outputs[0] == outputs[1] and outputs[0]
    assert not list(tmp_path.glob(".corpus*.tmp-*"))  # no temporary directory left behind


def test_build_of_the_sample_corpus(corpus, tmp_path):
    res = build_dataset(BuildConfig(sources=[str(corpus)], min_chars=64), tmp_path / "ds", log=lambda s: None)
    c = res.manifest.counts
    docs = c["documents"]
    assert docs["kept"] + sum(docs["dropped"].values()) == docs["read"]
    assert docs["dropped"].get("exact_duplicate", 0) > 0  # the stdlib repeats itself: dedup has work
    assert c["files"]["skipped"] == {}
    m = open_dataset(tmp_path / "ds")
    for split in ("train", "val", "test"):
        assert c["splits"][split]["docs"] > 0
        assert next(iter_texts(tmp_path / "ds", split, m))
    assert res.manifest.metrics["mb_per_s"] > 0
