"""Small synthetic inputs and readers shared by the build-stage tests.

Documents are random sequences of made-up words, so unrelated documents share no 5-word shingles and
near-dedup only fires where a test wants it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmops.config import BuildConfig
from lmops.data.build import build_dataset
from lmops.data.dataset import iter_records, open_dataset

SYLLABLES = ["ka", "lo", "mi", "ten", "dra", "vo", "sel", "pri", "nu", "gar", "fis", "ob", "ur", "zen"]
VOCAB = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES]


def prose(seed: int, words: int = 40) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words)) + "."


def cfg(*sources, **kw) -> BuildConfig:
    kw.setdefault("min_chars", 10)
    return BuildConfig(sources=[str(s) for s in sources], **kw)


def build(c: BuildConfig, out: Path, **kw):
    return build_dataset(c, out, log=lambda s: None, **kw)


def records(out: Path) -> dict[str, list[dict]]:
    m = open_dataset(out)
    return {s: list(iter_records(out, s, m)) for s in m.counts["splits"]}


def all_texts(out: Path) -> set[str]:
    return {r["text"] for recs in records(out).values() for r in recs}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_accounted(counts: dict) -> None:
    docs, files = counts["documents"], counts["files"]
    assert docs["kept"] + sum(docs["dropped"].values()) == docs["read"]
    assert files["read"] + sum(files["skipped"].values()) == files["seen"]
    assert sum(s["docs"] for s in counts["splits"].values()) == docs["kept"]
