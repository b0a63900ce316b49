"""A real, small lineage chain for registry tests: sources -> dataset -> tokens -> checkpoint -> pruned.

The build and tokenize stages are the real ones. The "train" output is an untrained tiny Llama written
through ``run_stage`` with the same inputs a training run records (training itself is tested elsewhere
and costs a minute); the "prune" variant zeroes half of each linear weight and records the checkpoint
as its input, as a compression stage does. Every directory carries a manifest the registry verifies.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lmops.config import BuildConfig, DedupConfig, EvaluateConfig, ModelConfig, SplitConfig, TokenizeConfig
from lmops.data.build import build_dataset
from lmops.data.tokenize import tokenize_dataset
from lmops.data.tokens import open_tokens
from lmops.evaluate.metrics import evaluate_model
from lmops.manifest import run_stage
from lmops.model import Vocab, build_model, save_model_dir

QUIET = {"log": lambda s: None}
WORDS = ("the registry keeps model versions with tags aliases lineage digests of checkpoints tokens "
         "datasets and raw sources so a served model can always be traced back").split()
TINY = ModelConfig(preset="custom", n_layer=1, n_head=2, d_model=32, d_ff=64, max_seq_len=128)
EVAL = EvaluateConfig(block_size=32, max_blocks=4, batch_size=4, latency_prompt_tokens=8, latency_new_tokens=4,
                      latency_repeats=1, device="cpu")


@dataclass
class Chain:
    sources: Path
    dataset: Path
    tokens: Path
    checkpoint: Path
    pruned: Path


def make_chain(root: Path, seed: int = 0, d_model: int = 32) -> Chain:
    rng = random.Random(seed)
    sources = root / "sources"
    sources.mkdir(parents=True)
    with open(sources / "docs.jsonl", "w") as f:
        for _ in range(120):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "."}) + "\n")
    build = BuildConfig(sources=[str(sources)], min_chars=1, dedup=DedupConfig(near=False),
                        split=SplitConfig(val=0.2, test=0.2))
    build_dataset(build, root / "dataset", **QUIET)
    tokenize_dataset(TokenizeConfig(vocab_size=300, batch_size=64), root / "dataset", root / "tokens", **QUIET)
    checkpoint = make_checkpoint(root / "tokens", root / "checkpoint", seed, d_model)
    pruned = make_pruned(checkpoint, root / "pruned")
    return Chain(sources, root / "dataset", root / "tokens", checkpoint, pruned)


def make_checkpoint(tokens: Path, out: Path, seed: int = 0, d_model: int = 32) -> Path:
    info = open_tokens(tokens, splits=("train",))
    cfg = TINY.model_copy(update={"d_model": d_model, "d_ff": 2 * d_model})

    def produce(tmp: Path) -> dict:
        torch.manual_seed(seed)
        model = build_model(cfg, Vocab.from_tokens(info))
        save_model_dir(model, tmp, tokens / "tokenizer")
        return {"counts": {"steps": 0, "tokens_seen": 0}}

    run_stage("train", out, code="tests.registry.chain", config={"model": cfg.model_dump(mode="json"), "seed": seed},
              inputs={"tokens": {"digest": info.manifest.digest, "path": str(tokens)}}, produce=produce, **QUIET)
    return out


def make_pruned(checkpoint: Path, out: Path) -> Path:
    from lmops.manifest import read_manifest
    from transformers import AutoModelForCausalLM

    def produce(tmp: Path) -> dict:
        model = AutoModelForCausalLM.from_pretrained(checkpoint)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear) and m is not model.lm_head:
                    w = m.weight
                    w.mul_(w.abs() >= w.abs().flatten().median())
        model.save_pretrained(tmp)
        for f in checkpoint.iterdir():  # tokenizer and generation files unchanged
            if f.name.startswith(("tokenizer", "special_tokens", "generation_config")):
                shutil.copy2(f, tmp / f.name)
        return {"counts": {"sparsity": 0.5}}

    run_stage("prune", out, code="tests.registry.chain", config={"sparsity": 0.5},
              inputs={"checkpoint": {"digest": read_manifest(checkpoint).digest, "path": str(checkpoint)}},
              produce=produce, **QUIET)
    return out


def evaluate(model_dir: Path, tokens: Path) -> dict:
    """The real evaluate stage's metrics (a few blocks: tiny and fast)."""
    return evaluate_model(model_dir, tokens, EVAL, out=model_dir.parent / f"{model_dir.name}-eval.json")
