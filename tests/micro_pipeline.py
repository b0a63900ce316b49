"""The micro configuration and corpus the whole-pipeline tests run on (tests/pipeline): every stage real,
each taking seconds on a small CPU."""

from __future__ import annotations

import json
import random
from pathlib import Path

MICRO = ["train.max_steps=12", "train.eval_every=6", "train.eval_batches=2", "train.checkpoint_every=12",
         "train.log_every=6", "train.micro_batch_size=8", "train.block_size=64", "tokenize.vocab_size=400",
         "evaluate.block_size=64", "evaluate.max_blocks=8", "evaluate.latency_repeats=1",
         "evaluate.latency_new_tokens=4", "compress.distill.enabled=false", "compress.prune.recovery_steps=0",
         "build.min_chars=1", "serve.max_prompt_tokens=64", "serve.port=0"]
WORDS = ("def return import class self value list dict index loop print string number module function "
         "argument result error file path").split()


def write_corpus(folder: Path, docs: int = 400) -> Path:
    """``folder/docs.jsonl``: ``docs`` short pseudo-code documents, the same ones every time (seeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(folder / "docs.jsonl", "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60)))}) + "\n")
    return folder
