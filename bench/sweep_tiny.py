"""The `tiny` preset's budget sweep: test bits per byte against training wall time, per candidate.

    python -P bench/sweep_tiny.py [--only NAME ...] [--threads 2] [--out sweep.json]

`make run` has a few minutes on 2 cores; most of what a user sees of the model is decided by how the
training part of that budget is spent (model shape, vocabulary, batch, learning rate and schedule,
steps). Each candidate runs the real stages in this process: build (the sample corpus, cached), tokenize
at its vocabulary (cached per vocabulary), the plain training loop (`lmops.train.loop.train_single`, the
same loop Ray Train runs, without Ray's start-up), and `lmops.evaluate` on the whole test split. The
table gives train seconds, tokens seen, test perplexity and bits per byte; the baseline is the preset as
committed before this sweep (`baseline`), and each row's ratio is against it in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from lmops.config import load_config
from lmops.data.build import build_dataset
from lmops.data.tokenize import tokenize_dataset
from lmops.evaluate.metrics import evaluate_model
from lmops.data.sample_corpus import ensure_sample_corpus
from lmops.train.loop import train_single

STATE = Path(os.environ.get("LMOPS_STATE_DIR") or ".state").resolve()
WORK = STATE / "bench" / "sweep-tiny"

# name -> overrides on configs/tiny.yaml. `baseline` is the preset before the sweep (2x64, vocab 4096,
# 200 steps x 16 x 128 tokens, lr 2e-3), the others move one or two things at a time from there.
def candidate(vocab: int, layers: int, width: int, steps: int, lr: float) -> list[str]:
    """Overrides for one point: vocabulary, depth x width (d_ff = 3 x width), steps of 16 x 128 tokens, lr."""
    return [f"tokenize.vocab_size={vocab}", f"model.n_layer={layers}", f"model.d_model={width}",
            f"model.d_ff={3 * width}", f"train.max_steps={steps}", "train.micro_batch_size=16", f"train.lr={lr:g}"]


CANDIDATES: dict[str, list[str]] = {
    # the preset before this sweep (~15 s of training)
    "baseline": candidate(4096, 2, 64, 200, 2e-3),
    "v2048": candidate(2048, 2, 64, 200, 2e-3),
    # about 100 s of training each on 2 quiet cores, steps from each shape's measured tok/s (16 x 128 tokens a step)
    "v4096-2x64-1000": candidate(4096, 2, 64, 1000, 3e-3),
    "v4096-2x64-1000-lr6": candidate(4096, 2, 64, 1000, 6e-3),
    "v4096-2x64-1400": candidate(4096, 2, 64, 1400, 3e-3),
    "v4096-2x128-670": candidate(4096, 2, 128, 670, 3e-3),
    # vocabulary 2048 halves the output layer, which is most of a 64-wide model's work: ~1.9x the tokens/s
    "v2048-2x64-1900": candidate(2048, 2, 64, 1900, 3e-3),
    "v2048-2x96-1500": candidate(2048, 2, 96, 1500, 3e-3),
    "v2048-4x128-690": candidate(2048, 4, 128, 690, 3e-3),
    "v2048-2x256-480": candidate(2048, 2, 256, 480, 2e-3),
    "v2048-4x192-430": candidate(2048, 4, 192, 430, 2e-3),
    "v1024-4x128-700": candidate(1024, 4, 128, 700, 3e-3),
}


def run(name: str, overrides: list[str], threads: int) -> dict:
    common = ["model.preset=custom", "model.max_seq_len=256", "model.n_head=4", "train.warmup_steps=20",
              "train.eval_every=100000", "train.checkpoint_every=100000", "train.log_every=100000",
              "evaluate.max_blocks=null"]
    cfg = load_config("tiny", [*common, *overrides])
    ensure_sample_corpus(cfg.build.sources)  # the preset's relative source: run from the repository root
    dataset = WORK / "dataset"
    build_dataset(cfg.build, dataset, cache_dir=WORK / "cache", log=lambda _: None)
    tokens = WORK / f"tokens-{cfg.tokenize.vocab_size}"
    tokenize_dataset(cfg.tokenize, dataset, tokens, cache_dir=WORK / "cache", log=lambda _: None)
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_single(cfg, tokens, WORK / "models" / name, log=None)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    ev = evaluate_model(WORK / "models" / name, tokens, cfg.evaluate)
    tc = cfg.train
    return {"name": name, "overrides": overrides, "train_s": round(train_s, 1),
            # CPU seconds over threads: the wall time on quiet cores (a loaded machine inflates train_s)
            "train_cpu_s_per_thread": round(train_cpu_s / threads, 1),
            "tokens_seen": tc.max_steps * tc.micro_batch_size * tc.block_size * tc.grad_accum,
            "final_loss": result.final_loss,
            "params": ev["params"], "perplexity": ev["perplexity"], "bits_per_byte": ev["bits_per_byte"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, help="write the rows as JSON here too")
    args = p.parse_args()
    names = args.only or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidate(s) {unknown}; have {list(CANDIDATES)}")
    rows = []
    print(f"{'candidate':<18} {'params':>8} {'tokens':>9} {'train s':>8} {'cpu s/thr':>9} {'ppl':>8} {'bits/byte':>9}")
    for name in names:
        row = run(name, CANDIDATES[name], args.threads)
        rows.append(row)
        print(f"{name:<18} {row['params']:>8,} {row['tokens_seen']:>9,} {row['train_s']:>8.1f} {row['train_cpu_s_per_thread']:>9.1f} "
              f"{row['perplexity']:>8.1f} {row['bits_per_byte']:>9.3f}", flush=True)
    base = next((r for r in rows if r["name"] == "baseline"), None)
    if base:
        print("\nagainst baseline: " + "; ".join(
            f"{r['name']} bpb x{r['bits_per_byte'] / base['bits_per_byte']:.3f} time x{r['train_s'] / base['train_s']:.2f}"
            for r in rows if r is not base))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
