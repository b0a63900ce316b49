"""``lmops run``: the stages in order (build, tokenize, train, evaluate, compress) on one machine, each skipped when its output is cached.

Stages talk only through their output directories under ``<workdir>/``; this module just calls
them in order and collects one summary row per stage for the closing table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmops.config import Config
from lmops.data.dataset import SPLITS
from lmops.manifest import StageResult

SAMPLE_CORPUS = Path(".state/sample-corpus")


def ensure_sample_corpus(cfg: Config) -> None:
    """The default source is the sample corpus: make it (offline, deterministic) on first use."""
    if any(Path(s) == SAMPLE_CORPUS for s in cfg.build.sources):
        from lmops.data.sample_corpus import make_sample_corpus

        make_sample_corpus(SAMPLE_CORPUS)


def run_local(cfg: Config) -> list[dict[str, Any]]:
    from lmops.compress.stage import compress_stage
    from lmops.data.build import build_dataset
    from lmops.data.tokenize import tokenize_dataset
    from lmops.evaluate_stage import evaluate_stage
    from lmops.train.stage import train_stage

    ensure_sample_corpus(cfg)
    work, cache = Path(cfg.workdir), cfg.cache_dir
    steps = [
        ("build", lambda: build_dataset(cfg.build, work / "dataset", cache_dir=cache)),
        ("tokenize", lambda: tokenize_dataset(cfg.tokenize, work / "dataset", work / "tokens", cache_dir=cache)),
        ("train", lambda: train_stage(cfg, work / "tokens", work / "checkpoint", cache_dir=cache)),
        ("evaluate", lambda: evaluate_stage(cfg, work / "checkpoint", work / "tokens", work / "eval", cache_dir=cache)),
        ("compress", lambda: compress_stage(cfg, work / "checkpoint", work / "tokens", work / "compressed",
                                            cache_dir=cache)),
    ]
    rows = []
    for name, stage in steps:
        started = time.time()
        rows.append(summary(name, stage(), time.time() - started))
    return rows


def summary(stage: str, res: StageResult, seconds: float | None = None) -> dict[str, Any]:
    """One row of the closing table: status, time, output and the figures a user looks for."""
    m = res.manifest
    return {
        "stage": stage, "status": "cached" if res.cached else "ran", "path": str(res.path),
        "seconds": round(seconds if seconds is not None else m.seconds, 2),
        "digest": m.digest[:12], "detail": _detail(stage, m.counts, m.metrics),
    }


def _detail(stage: str, c: dict[str, Any], mt: dict[str, Any]) -> str:
    if stage == "build":
        docs, splits = c.get("documents", {}), c.get("splits", {})
        return f"{docs.get('kept')} of {docs.get('read')} documents kept; " + ", ".join(
            f"{s} {splits[s]['docs']}" for s in SPLITS if s in splits)
    if stage == "tokenize":
        tokens = c.get("tokens", {})
        return f"vocab {c.get('vocab_size')} ({c.get('dtype')}); tokens " + ", ".join(
            f"{s} {tokens[s]:,}" for s in SPLITS if s in tokens)
    if stage == "train":
        return (f"{mt.get('steps')} steps x {mt.get('num_workers')} worker(s); loss {_f(mt.get('first_loss'))} -> "
                f"{_f(mt.get('final_loss'))}, val {_f(mt.get('first_val_loss'))} -> {_f(mt.get('val_loss'))}; "
                f"{mt.get('tokens_per_s', 0):,.0f} tok/s")
    if stage == "evaluate":
        return (f"perplexity {_f(mt.get('perplexity'), 2)}; {bits_per_byte_text(mt.get('bits_per_byte'))} "
                f"({scored_text(c.get('scored_tokens'), c.get('split_tokens'))}); "
                f"{mt.get('eval_tokens_per_s', 0):,.0f} tok/s; "
                f"{_f(mt.get('latency_ms_per_token'), 2)} ms/token; {mt.get('size_bytes', 0) / 1e6:.1f} MB; "
                f"gate {'pass' if mt.get('gate_passed') else 'FAIL'}")
    if stage == "compress":
        return "; ".join(f"{v} ppl x{m['perplexity_ratio']:.3f} {bits_per_byte_text(m.get('bits_per_byte'))} "
                         f"size x{m['size_ratio']:.2f} "
                         f"{'pass' if m['passed'] else 'FAIL'}" for v, m in mt.items() if v != "fp32")
    return ""


def compressors_text(metrics: dict[str, Any]) -> str:
    """The model against gzip -9 and xz -9e on the same test text (lmops.compressors), for the summary."""
    return (f"same test text: model {_f(metrics.get('bits_per_byte'))}, gzip -9 {_f(metrics.get('gzip_9_bits_per_byte'))},"
            f" xz -9e {_f(metrics.get('xz_9e_bits_per_byte'))} bits/byte")


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def bits_per_byte_text(bpb: float | None) -> str:
    """``1.234 bits/byte``; without a figure, why (lmops.data.token_bytes: only byte-level tokenizers)."""
    return "bits/byte n/a (tokenizer not byte-level)" if bpb is None else f"{bpb:.3f} bits/byte"


def scored_text(scored: int | None, total: int | None) -> str:
    """How much of the test split evaluation scored (all of it unless evaluate.max_blocks caps it)."""
    return "tokens scored: -" if scored is None or total is None else f"{scored:,} of {total:,} test tokens scored"


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["path"]) for r in rows)
    print()
    print(f"{'stage':<10} {'status':<7} {'time':>7}  {'output':<{width}}  detail")
    for r in rows:
        print(f"{r['stage']:<10} {r['status']:<7} {r['seconds']:>6.1f}s  {r['path']:<{width}}  {r['detail']}")
