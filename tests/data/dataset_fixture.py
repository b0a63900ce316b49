"""Corpora and dataset directories for the tokenize tests, made by the real build stage.

The build stage normalizes text (NFC, whitespace, control characters) and decides each document's
split by hash, so tests compare what tokenize wrote against what the dataset holds (``split_texts``),
never against the raw input. Text the build would normalize away (tabs, runs of spaces) is tested
on the tokenizer directly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmops.config import BuildConfig, DedupConfig, SplitConfig
from lmops.data.build import build_dataset
from lmops.data.dataset import SPLITS, iter_texts, open_dataset
from lmops.manifest import StageResult

WORDS = ("the model reads tokens and writes text while data flows through stages with manifests "
         "cache digest shard split train value test batch encode decode byte pair merge vocabulary").split()

# Text that byte-level BPE must give back exactly: accents, Greek, CJK, Cyrillic, emoji with ZWJ and
# skin tones, flags, runs of spaces/tabs/newlines, leading/trailing blanks, the literal EOS/pad text.
HARD_DOCS = [
    "Café naïve — résumé; Ωμέγα; 日本語のテキスト; Привет мир",
    "emoji 🤗🚀 family 👩‍👩‍👧 thumbs 👍🏽 flags 🇺🇦",
    "   leading spaces\n\n\n\ttabs\t\tand  double  spaces   \n trailing  ",
    "a literal <|endoftext|> and <|pad|> inside a document is text, not a boundary",
    "line one\n\nline two after a blank line\nline three",
    "\n",
    "x",
]

# Small, fast, and every document kept: no length filter, no near-dedup (synthetic sentences from a
# 30-word vocabulary look alike), large val/test/calibration fractions so every split has documents.
TEST_BUILD = BuildConfig(sources=[], min_chars=1, dedup=DedupConfig(near=False),
                         split=SplitConfig(val=0.2, test=0.2, calibration=0.1))


def synthetic_docs(n: int, seed: int = 0) -> list[str]:
    """n deterministic pseudo-sentences (a seeded RNG, so every run gets the same corpus)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


def make_dataset(out: Path, docs: list[str], cfg: BuildConfig = TEST_BUILD) -> StageResult:
    """Write ``docs`` as a .jsonl source beside ``out`` and run the build stage on it."""
    src = out.parent / f"{out.name}-source"
    src.mkdir(parents=True, exist_ok=True)
    with open(src / "docs.jsonl", "w", encoding="utf-8") as f:
        for text in docs:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return build_dataset(cfg.model_copy(update={"sources": [str(src)]}), out, log=lambda s: None)


def split_texts(dataset_dir: Path) -> dict[str, list[str]]:
    """The documents of every split the dataset has, in the order tokenize reads them."""
    m = open_dataset(dataset_dir)
    return {s: list(iter_texts(dataset_dir, s, m)) for s in SPLITS if s in m.counts.get("splits", {})}
