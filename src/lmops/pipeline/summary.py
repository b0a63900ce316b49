"""A run's summary: one row per stage (what the kfp tasks record as their artifact's metadata, shown in the
Kubeflow UI) and the closing table that ``lmops pipeline run`` prints from those rows, whichever runner ran
the chain. Text only: nothing here loads a model."""

from __future__ import annotations

from typing import Any

from lmops.data.dataset import SPLITS
from lmops.evaluate.report import bits_per_byte_text, compressors_text, figure, scored_text
from lmops.manifest import StageResult

TASKS = ("resolve-config", "build", "tokenize", "train", "evaluate", "compress", "register", "deploy")
"""The pipeline's tasks in the order they run (and their rows print)."""


def stage_row(stage: str, res: StageResult, seconds: float | None = None) -> dict[str, Any]:
    """One stage's row: status, time, output and the figures a user looks for."""
    m = res.manifest
    return {
        "stage": stage, "status": "cached" if res.cached else "ran", "path": str(res.path),
        "seconds": round(seconds if seconds is not None else m.seconds, 2),
        "digest": m.digest[:12], "detail": stage_detail(stage, m.counts, m.metrics),
    }


def stage_detail(stage: str, c: dict[str, Any], mt: dict[str, Any]) -> str:
    """The one-line detail of a stage's row, from its manifest's counts and metrics."""
    if stage == "build":
        docs, splits = c.get("documents", {}), c.get("splits", {})
        return f"{docs.get('kept')} of {docs.get('read')} documents kept; " + ", ".join(
            f"{s} {splits[s]['docs']}" for s in SPLITS if s in splits)
    if stage == "tokenize":
        tokens = c.get("tokens", {})
        return f"vocab {c.get('vocab_size')} ({c.get('dtype')}); tokens " + ", ".join(
            f"{s} {tokens[s]:,}" for s in SPLITS if s in tokens)
    if stage == "train":
        return (f"{mt.get('steps')} steps x {mt.get('num_workers')} worker(s); loss {figure(mt.get('first_loss'))} -> "
                f"{figure(mt.get('final_loss'))}, val {figure(mt.get('first_val_loss'))} -> "
                f"{figure(mt.get('val_loss'))}; {mt.get('tokens_per_s', 0):,.0f} tok/s")
    if stage == "evaluate":
        return (f"perplexity {figure(mt.get('perplexity'), 2)}; {bits_per_byte_text(mt.get('bits_per_byte'))} "
                f"({scored_text(c.get('scored_tokens'), c.get('split_tokens'))}); "
                f"{mt.get('eval_tokens_per_s', 0):,.0f} tok/s; "
                f"{figure(mt.get('latency_ms_per_token'), 2)} ms/token; {mt.get('size_bytes', 0) / 1e6:.1f} MB; "
                f"gate {'pass' if mt.get('gate_passed') else 'FAIL'}")
    if stage == "compress":
        return "; ".join(f"{v} ppl x{m['perplexity_ratio']:.3f} {bits_per_byte_text(m.get('bits_per_byte'))} "
                         f"size x{m['size_ratio']:.2f} "
                         f"{'pass' if m['passed'] else 'FAIL'}" for v, m in mt.items() if v != "fp32")
    return ""


def run_summary(rows: dict[str, dict[str, Any]], total_s: float, *, run_dir: str,
                mlflow_url: str = "") -> dict[str, Any]:
    """The whole run from its rows (task name -> the row its step returned)."""
    table = [{"stage": "config" if task == "resolve-config" else task, "status": rows[task].get("status", "?"),
              "seconds": float(rows[task].get("seconds") or 0), "detail": rows[task].get("detail", "")}
             for task in TASKS if task in rows]
    work = sum(r["seconds"] for r in table)
    return {"run_dir": run_dir, "total_s": round(total_s, 1), "stages_s": round(work, 1),
            "overhead_s": round(total_s - work, 1), "rows": table,
            "variants": rows.get("compress", {}).get("metrics", {}),
            "registered": rows.get("register", {}).get("model_uri", ""), "mlflow": mlflow_url,
            "endpoint": rows.get("deploy", {}).get("url", ""), "example": rows.get("deploy", {}).get("example", {}),
            "evaluation": rows.get("evaluate", {}).get("metrics", {})}


def print_variants(variants: dict[str, dict[str, Any]]) -> None:
    """The test-split figures per model (fp32 first, the baseline of the ratios); bits/byte is blank where
    the tokenizer is not byte-level."""
    print(f"{'model':<8} {'perplexity':>10} {'bits/byte':>9} {'ppl/fp32':>8} {'size/fp32':>9}  gate")
    for v, m in variants.items():
        bpb = "-" if m.get("bits_per_byte") is None else f"{m['bits_per_byte']:.3f}"
        ratios = "" if v == "fp32" else (f" {m['perplexity_ratio']:>8.3f} {m['size_ratio']:>9.2f}  "
                                         f"{'pass' if m['passed'] else 'FAIL'}")
        print(f"{v:<8} {m['perplexity']:>10.2f} {bpb:>9}{ratios}")


def print_summary(s: dict[str, Any]) -> None:
    print()
    print(f"{'stage':<10} {'status':<7} {'time':>7}  detail")
    for r in s["rows"]:
        print(f"{r['stage']:<10} {r['status']:<7} {r['seconds']:>6.1f}s  {r['detail']}")
    print()
    if s["variants"]:
        print_variants(s["variants"])
        print()
    if "xz_9e_bits_per_byte" in s["evaluation"]:
        print(compressors_text(s["evaluation"]))
    if s["registered"]:
        print(f"registered: {s['registered']} (alias candidate) in {s['mlflow']}")
    else:
        print("registered: nothing (the evaluation gate failed against the champion)")
    if s["endpoint"]:
        print(f"endpoint:   {s['endpoint']}  (OpenAI: {s['endpoint']}/openai/v1/completions; KServe v1/v2)")
    if s["example"]:
        ex = s["example"]
        print(f"example:    {ex['prompt']!r} -> {ex['completion']!r}  ({ex.get('settings', 'greedy')})")
    print(f"total {s['total_s']:.1f}s: stages {s['stages_s']:.1f}s, orchestration {s['overhead_s']:.1f}s"
          f"  (outputs: {s['run_dir']}; `make stop` stops the local servers)")
