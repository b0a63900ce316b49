"""Training benchmarks: ratios against plain baselines, as medians of interleaved pairs.

    python bench/train.py [--preset tiny] [--pairs 7] [--steps 10]
    python bench/train.py --preset gpt2-124m --gpu-run TOKENS_DIR [--max-steps 300]   # on a CUDA machine

(a) our loop (``lmops.train.loop.fit``: schedule, accumulation bookkeeping, clipping, logging) against a
    minimal hand-written torch step (forward, loss, backward, AdamW step) on the same model and batch.
    Target: >= 0.97x the baseline's throughput.
(b) Ray Train, 1 worker, steady state, against the plain loop on the same real token shards (wall
    clock, 1 thread each; Ray's start-up reported apart). Target: >= 0.97x.
(c) evaluation tokens/s (the perplexity pass) against training tokens/s.

Method (shared 2-core machines are noisy): one thread (``torch.set_num_threads(1)``), process CPU time
instead of wall time, and each pair runs both sides back to back, alternating which goes first, so
drift hits both; the figure is the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lmops.config import EvaluateConfig, ModelConfig, TrainConfig, load_config
from lmops.evaluate.metrics import perplexity
from lmops.model import Vocab, build_model, count_params
from lmops.train.loop import fit
from lmops.train.optim import make_optimizer

CPU = torch.device("cpu")


def cpu_seconds(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def interleaved(a: Callable[[], object], b: Callable[[], object], pairs: int) -> list[tuple[float, float]]:
    """(seconds of a, seconds of b) per pair; the order alternates between pairs."""
    out = []
    for i in range(pairs):
        if i % 2 == 0:
            ta = cpu_seconds(a)
            tb = cpu_seconds(b)
        else:
            tb = cpu_seconds(b)
            ta = cpu_seconds(a)
        out.append((ta, tb))
    return out


def setup(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int):
    torch.manual_seed(0)
    model = build_model(model_cfg, Vocab(vocab_size, 0, 1), block_size=train_cfg.block_size)
    x = torch.randint(0, vocab_size, (train_cfg.micro_batch_size, train_cfg.block_size + 1))
    return model, (x[:, :-1].contiguous(), x[:, 1:].contiguous())


# ---------------------------------------------------------------- (a) our loop vs a hand-written step
def bench_loop_vs_handwritten(model, batch, train_cfg: TrainConfig, steps: int, pairs: int) -> dict:
    ours_model, base_model = copy.deepcopy(model), copy.deepcopy(model)
    ours_opt = make_optimizer(ours_model, train_cfg, "cpu")
    base_opt = torch.optim.AdamW(base_model.parameters(), lr=train_cfg.lr, betas=train_cfg.betas,
                                 weight_decay=train_cfg.weight_decay)
    loop_cfg = train_cfg.model_copy(update={"max_steps": steps, "log_every": steps, "eval_every": 10 * steps})
    x, y = batch

    def ours() -> None:
        fit(ours_model, ours_opt, itertools.repeat(batch), loop_cfg, device=CPU, dtype=torch.float32, log=None)

    def handwritten() -> None:
        for _ in range(steps):
            base_opt.zero_grad(set_to_none=True)
            logits = base_model(input_ids=x).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            loss.backward()
            base_opt.step()

    ours(), handwritten()  # warm-up: allocator, optimizer state
    times = interleaved(ours, handwritten, pairs)
    tokens = steps * x.numel()
    ratios = [tb / ta for ta, tb in times]  # throughput ours / baseline
    return {"ratio": statistics.median(ratios), "ratios": ratios,
            "ours_tokens_per_cpu_s": tokens / statistics.median(t for t, _ in times),
            "handwritten_tokens_per_cpu_s": tokens / statistics.median(t for _, t in times)}


# ---------------------------------------------------------------- (b) Ray Train vs the plain loop
def bench_ray_vs_plain(preset: str, steps: int) -> dict:
    """Steady-state wall-clock tokens/s of the train stage on Ray Train (1 worker, 1 CPU, so 1 thread)
    against the plain in-process loop (1 thread) on the same real token shards, plain runs before and
    after the Ray run. Each side's figure is the median of its log intervals, the first one (start-up,
    first batches) left out; the Ray start-up (fit() call to the end, minus the steps) is reported apart."""
    import json
    import tempfile
    from pathlib import Path

    from lmops.data.build import build_dataset
    from lmops.data.sample_corpus import make_sample_corpus
    from lmops.data.tokenize import tokenize_dataset
    from lmops.train.loop import train_single
    from lmops.train.stage import train_stage

    def steady(history: list[dict]) -> float:
        rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
        return statistics.median(rates[1:] or rates)

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = load_config(preset, [f"workdir={d}", "cache_dir=null", f"train.max_steps={steps}", "train.log_every=10",
                                   f"train.eval_every={10 * steps}", "train.eval_batches=1", "train.num_workers=1",
                                   f"train.checkpoint_every={steps}"])
        corpus = make_sample_corpus(Path(".state/sample-corpus"))
        build_dataset(cfg.build.model_copy(update={"sources": [str(corpus)]}), d / "dataset", log=lambda s: None)
        tokenize_dataset(cfg.tokenize, d / "dataset", d / "tokens", log=lambda s: None)
        plain = [steady(train_single(cfg, d / "tokens", d / "plain1", log=None).history)]
        started = time.perf_counter()
        train_stage(cfg, d / "tokens", d / "ray", log=lambda s: None)
        wall = time.perf_counter() - started
        ray_rate = steady(json.loads((d / "ray" / "train_metrics.json").read_text())["history"])
        plain.append(steady(train_single(cfg, d / "tokens", d / "plain2", log=None).history))
    tokens = steps * cfg.train.micro_batch_size * cfg.train.block_size * cfg.train.grad_accum
    return {"ratio": ray_rate / statistics.median(plain), "ray_tokens_per_s": ray_rate, "plain_tokens_per_s": plain,
            "ray_wall_s": wall, "ray_startup_s": wall - tokens / ray_rate}


# ---------------------------------------------------------------- (c) evaluation vs training tokens/s
def bench_eval_vs_train(model, batch, train_cfg: TrainConfig, eval_cfg: EvaluateConfig, steps: int, pairs: int,
                        vocab_size: int) -> dict:
    train_model = copy.deepcopy(model)
    opt = make_optimizer(train_model, train_cfg, "cpu")
    loop_cfg = train_cfg.model_copy(update={"max_steps": steps, "log_every": steps, "eval_every": 10 * steps})
    train_tokens = steps * batch[0].numel()
    eval_model = copy.deepcopy(model).eval()
    # the same number of tokens through the perplexity pass, in the evaluation's own blocks and batches
    ids = np.random.default_rng(0).integers(0, vocab_size, size=train_tokens + 1).astype(np.uint16)
    eval_fed = {}

    def train() -> None:
        fit(train_model, opt, itertools.repeat(batch), loop_cfg, device=CPU, dtype=torch.float32, log=None)

    def evaluate() -> None:
        r = perplexity(eval_model, ids, eval_cfg.block_size, eval_cfg.stride or eval_cfg.block_size,
                       eval_cfg.batch_size, CPU)
        eval_fed["tokens"] = r["eval_tokens_per_s"] * r["eval_seconds"]

    train(), evaluate()
    times = interleaved(evaluate, train, pairs)
    ratios = [(eval_fed["tokens"] / te) / (train_tokens / tt) for te, tt in times]
    return {"ratio": statistics.median(ratios), "ratios": ratios,
            "eval_tokens_per_cpu_s": eval_fed["tokens"] / statistics.median(t for t, _ in times),
            "train_tokens_per_cpu_s": train_tokens / statistics.median(t for _, t in times)}


# ---------------------------------------------------------------- a GPU run of a preset (bf16 + compile)
def gpu_run(preset: str, tokens_dir: str, max_steps: int, log_every: int) -> None:
    """The preset's model and train sections on one CUDA device, through the same fit(); prints the log
    lines and the steady-state tokens/s and MFU (the first log interval, with compilation, left out)."""
    from lmops.data.tokens import load_split, open_tokens
    from lmops.devices import resolve_device, resolve_dtype
    from lmops.train.data import Batches
    from lmops.train.loop import maybe_compile

    cfg = load_config(preset, [f"train.max_steps={max_steps}", f"train.log_every={log_every}",
                               f"train.eval_every={10 * max_steps}"])
    tc = cfg.train
    device = resolve_device("cuda")
    dtype = resolve_dtype(tc.dtype, device)
    torch.manual_seed(tc.seed)
    info = open_tokens(tokens_dir, splits=("train", "val"))
    model = build_model(cfg.model, Vocab.from_tokens(info), block_size=tc.block_size).to(device)
    opt = make_optimizer(model, tc, device.type)
    batches = Batches(load_split(info, "train"), tc.micro_batch_size, tc.block_size, seed=tc.seed)
    val = Batches(load_split(info, "val"), tc.micro_batch_size, tc.block_size, seed=tc.seed + 1).take(tc.eval_batches)
    print(f"{preset} on {torch.cuda.get_device_name(device)}: {count_params(model):,} params, vocab {info.vocab_size}, "
          f"{tc.micro_batch_size}x{tc.block_size} x accum {tc.grad_accum}, {dtype}, compile={tc.compile}", flush=True)
    r = fit(maybe_compile(model, tc), opt, batches, tc, device=device, dtype=dtype, val_batches=val,
            log=lambda s: print(s, flush=True))
    losses = [h["loss"] for h in r.history if "loss" in h]
    vals = [h["val_loss"] for h in r.history if "val_loss" in h]
    print(f"steady state: {r.tokens_per_s:,.0f} tok/s, MFU {100 * (r.mfu or 0):.1f}%; loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f}, val {vals[0]:.3f} -> {vals[-1]:.3f}; {r.seconds:.0f} s for {r.steps} steps; "
          f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="config preset whose model/train/evaluate sections are used")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument("--grad-clip", type=float, default=None,
                    help="override train.grad_clip (0 = off, like the hand-written step; clipping costs ~3%% on tiny)")
    ap.add_argument("--gpu-run", metavar="TOKENS_DIR", help="instead: train the preset on CUDA (bf16 + compile) "
                    "with these token shards and report tokens/s and MFU")
    ap.add_argument("--max-steps", type=int, default=300, help="steps of the --gpu-run")
    ap.add_argument("--skip-ray", action="store_true", help="skip (b), which starts Ray (about a minute)")
    ap.add_argument("--ray-steps", type=int, default=150, help="training steps of each side of (b)")
    args = ap.parse_args()
    if args.gpu_run:
        gpu_run(args.preset, args.gpu_run, args.max_steps, log_every=25)
        return

    torch.set_num_threads(1)
    cfg = load_config(args.preset)
    overrides = {"micro_batch_size": args.micro_batch_size, "grad_clip": args.grad_clip}
    train_cfg = cfg.train.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    vocab = cfg.tokenize.vocab_size
    model, batch = setup(cfg.model, train_cfg, vocab)
    print(f"preset {args.preset}: {count_params(model):,} params, batch {tuple(batch[0].shape)}, vocab {vocab}, "
          f"grad_clip {train_cfg.grad_clip}, "
          f"1 thread, {args.pairs} interleaved pairs x {args.steps} steps, process CPU time")

    a = bench_loop_vs_handwritten(model, batch, train_cfg, args.steps, args.pairs)
    print(f"(a) our loop / hand-written step: {a['ratio']:.3f}x  (target >= 0.97)  "
          f"ours {a['ours_tokens_per_cpu_s']:,.0f} tok/s, hand-written {a['handwritten_tokens_per_cpu_s']:,.0f} tok/s; "
          f"pairs {', '.join(f'{r:.3f}' for r in a['ratios'])}")
    if not args.skip_ray:
        b = bench_ray_vs_plain(args.preset, args.ray_steps)
        print(f"(b) Ray Train 1 worker / plain loop, steady state: {b['ratio']:.3f}x  (target >= 0.97)  "
              f"ray {b['ray_tokens_per_s']:,.0f} tok/s, plain {' / '.join(f'{p:,.0f}' for p in b['plain_tokens_per_s'])}"
              f" tok/s (before / after); Ray start-up {b['ray_startup_s']:.1f} s of {b['ray_wall_s']:.1f} s")
    c = bench_eval_vs_train(model, batch, train_cfg, cfg.evaluate, args.steps, args.pairs, vocab)
    print(f"(c) evaluation / training tokens/s: {c['ratio']:.2f}x  "
          f"eval {c['eval_tokens_per_cpu_s']:,.0f} tok/s, train {c['train_tokens_per_cpu_s']:,.0f} tok/s; "
          f"pairs {', '.join(f'{r:.2f}' for r in c['ratios'])}")


if __name__ == "__main__":
    main()
