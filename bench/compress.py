"""Compression benchmark: int8 and the distilled student against the fp32 model they came from.

    python bench/compress.py [--preset small] [--train-steps 300] [--pairs 15]
    python bench/compress.py --checkpoint runs/small/checkpoint --tokens runs/small/tokens

Without --checkpoint the preset's model is trained here, single-process (``train_single``), on token
shards built from the sample corpus (cached under .state/cache). The compress stage then writes the
int8, pruned and student variants (the student through Ray Train) and scores each with ``lmops.evaluate``.

Figures (targets from the compression issue):
- int8 / fp32 prefill latency, batch 1, 128 tokens                 target <= 0.55x
- int8 / fp32 bytes of the linear layers' weights                  target <= 0.30x
- int8 / fp32 whole weight file (the fp32 embedding stays)
- int8 / fp32 test perplexity                                      target <= 1.02x
- student / teacher prefill latency and perplexity; pruned for reference (unstructured zeros do not
  speed up dense kernels — its gain is compressibility, not latency).

Method: ``torch.set_num_threads(1)``; each pair times fp32 and the variant back to back, alternating
which goes first, in process CPU time (the 2 cores are shared, so wall time would also count other
people's work); the figure is the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from lmops.config import load_config

# CPU-sized runs of the preset's model: shorter sequences and batches than its GPU training settings
CPU_OVERRIDES = ["train.micro_batch_size=8", "train.block_size=128", "evaluate.block_size=128",
                 "evaluate.max_blocks=64", "train.eval_batches=4"]


def prefill_seconds(model: torch.nn.Module, ids: torch.Tensor, repeats: int = 3) -> float:
    """CPU seconds of one forward pass over the prompt (the min of a few, to drop one-off stalls)."""
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.process_time()
            model(input_ids=ids, use_cache=False)
            times.append(time.process_time() - start)
    return min(times)


def paired_ratio(base: torch.nn.Module, other: torch.nn.Module, ids: torch.Tensor, pairs: int) -> dict:
    with torch.no_grad():  # warm-up: allocator, fbgemm packing caches
        base(input_ids=ids)
        other(input_ids=ids)
    ratios, tb, to = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            b, o = prefill_seconds(base, ids), prefill_seconds(other, ids)
        else:
            o, b = prefill_seconds(other, ids), prefill_seconds(base, ids)
        ratios.append(o / b)
        tb.append(b)
        to.append(o)
    return {"ratio": statistics.median(ratios), "base_ms": 1000 * statistics.median(tb),
            "other_ms": 1000 * statistics.median(to)}


def prepare(preset: str, workdir: Path, train_steps: int) -> tuple[Path, Path, object]:
    """(checkpoint, tokens, config): sample corpus -> dataset -> tokens -> single-process training."""
    from lmops.data.build import build_dataset
    from lmops.data.sample_corpus import make_sample_corpus
    from lmops.data.tokenize import tokenize_dataset
    from lmops.train.loop import train_single

    cfg = load_config(preset, [f"workdir={workdir}", *CPU_OVERRIDES, f"train.max_steps={train_steps}",
                               "train.log_every=50", f"train.eval_every={train_steps}", "train.warmup_steps=20"])
    corpus = make_sample_corpus(Path(".state/sample-corpus"))
    build_dataset(cfg.build.model_copy(update={"sources": [str(corpus)]}), workdir / "dataset",
                  cache_dir=cfg.cache_dir, log=lambda s: None)
    tokenize_dataset(cfg.tokenize, workdir / "dataset", workdir / "tokens", cache_dir=cfg.cache_dir, log=lambda s: None)
    ckpt = workdir / "checkpoint"
    if not (ckpt / "model.safetensors").is_file():
        started = time.time()
        r = train_single(cfg, workdir / "tokens", ckpt, log=print)
        print(f"trained {preset} for {train_steps} steps in {time.time() - started:.0f}s, val loss {r.val_loss:.3f}")
    return ckpt, workdir / "tokens", cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--checkpoint", help="fp32 model directory (default: train one here)")
    ap.add_argument("--tokens", help="tokens directory of the checkpoint (needed with --checkpoint)")
    ap.add_argument("--workdir", default=".state/bench-compress")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--set", action="append", default=[], help="config override for the compress stage")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from lmops.compress.quantize import load_quantized
    from lmops.compress.stage import compress_stage
    from lmops.data.tokens import load_split, open_tokens

    workdir = Path(args.workdir).resolve() / args.preset
    if args.checkpoint:
        if not args.tokens:
            ap.error("--checkpoint needs --tokens")
        ckpt, tokens = Path(args.checkpoint), Path(args.tokens)
    else:
        ckpt, tokens, cfg = prepare(args.preset, workdir, args.train_steps)
    cfg = load_config(args.preset, [f"workdir={workdir}", *CPU_OVERRIDES, f"compress.distill.steps={args.distill_steps}",
                                    "train.log_every=25", *args.set])
    started = time.time()
    res = compress_stage(cfg, ckpt, tokens, workdir / "compressed", cache_dir=cfg.cache_dir)
    print(f"compress stage: {time.time() - started:.0f}s ({'cached' if res.cached else 'ran'})")
    rows = {r["variant"]: r for r in json.loads((res.path / "compress.json").read_text())["rows"]}

    ids = torch.from_numpy(load_split(open_tokens(tokens, splits=("test",)), "test")[: args.prompt_tokens]
                           .astype("int64"))[None]
    fp32 = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    loaders = {"int8": lambda p: load_quantized(p),
               "pruned": lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval(),
               "student": lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()}
    lat = {name: paired_ratio(fp32, load(res.path / name), ids, args.pairs)
           for name, load in loaders.items() if name in rows}

    print(f"\n{args.preset} preset, {rows['fp32']['params']:,} params; prefill batch 1 x {ids.shape[1]} tokens, "
          f"1 thread, median of {args.pairs} interleaved pairs (CPU time)")
    print(f"{'variant':<8} {'prefill ms':>10} {'x fp32':>7} {'ppl':>9} {'x fp32':>7} {'file MB':>8} {'x fp32':>7}"
          f" {'lin-w x':>8}  verdict")
    for name, r in rows.items():
        l = lat.get(name, {"ratio": 1.0, "other_ms": next(iter(lat.values()))["base_ms"] if lat else float("nan")})
        lin = f"{r['linear_weight_ratio']:.3f}" if "linear_weight_ratio" in r else "-"
        verdict = "baseline" if name == "fp32" else ("pass" if r["passed"] else "FAIL: " + r["reasons"][0])
        print(f"{name:<8} {l['other_ms']:>10.2f} {l['ratio']:>7.3f} {r['perplexity']:>9.3f} {r['perplexity_ratio']:>7.4f}"
              f" {r['size_bytes'] / 1e6:>8.2f} {r['size_ratio']:>7.3f} {lin:>8}  {verdict}")
    q = rows.get("int8")
    if q:
        print("\ntargets (int8): prefill <= 0.55x: {:.3f} {} | linear-weight bytes <= 0.30x: {:.3f} {} | "
              "perplexity <= 1.02x: {:.4f} {}".format(
                  lat["int8"]["ratio"], _ok(lat["int8"]["ratio"] <= 0.55), q["linear_weight_ratio"],
                  _ok(q["linear_weight_ratio"] <= 0.30), q["perplexity_ratio"], _ok(q["perplexity_ratio"] <= 1.02)))
    s = rows.get("student")
    if s:
        print(f"student: {s['student_layers']} of {s['teacher_layers']} layers, {s['student_params']:,} params; "
              f"prefill {lat['student']['ratio']:.3f}x, perplexity {s['perplexity_ratio']:.3f}x of the teacher")


def _ok(flag: bool) -> str:
    return "ok" if flag else "MISSED"


if __name__ == "__main__":
    main()
