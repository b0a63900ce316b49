"""Stage 5 ``compress``: checkpoint/ + tokens/ -> int8/, pruned/, student/ with a gated comparison table.

Output directory::

    fp32_eval.json          the checkpoint's own eval (the baseline every variant is gated against)
    int8/  pruned/  student/   each a model directory with its eval.json and its own manifest.json
                            (enabled variants only; the manifest names the checkpoint it came from, so a
                            variant registers and traces its lineage like any stage output)
    compress.json           one row per model: size, CPU latency, perplexity, bits per byte, ratios vs fp32,
                            verdict, reasons
    compress.png            the same as bar charts, budgets drawn in
    manifest.json           inputs: the checkpoint's and the tokens' digests

Every model is scored by the same ``lmops.evaluate.metrics.evaluate_model`` on the test split, on the CPU: the
int8 kernels are CPU kernels, and one device for all keeps the latency column comparable. Verdicts
come from ``lmops.gates.check`` with the ``compress.gates`` rules of the variant against the fp32 eval.
A failing variant is still written (and its reasons recorded): the registry decides what to do with it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from lmops import gates
from lmops.compress import CompressError
from lmops.config import Config
from lmops.data.tokens import open_tokens
from lmops.evaluate.report import bits_per_byte_text
from lmops.manifest import (MANIFEST, StageResult, code_digest, content_digest, file_table, run_stage, stage_key,
                            verify, write_manifest)

_HERE = Path(__file__).resolve().parent
CODE = code_digest(*sorted(_HERE.glob("*.py")), *sorted((_HERE.parent / "evaluate").glob("*.py")),
                   _HERE.parent / "gates.py", _HERE.parent / "train" / "loop.py")
# train settings that change how a run is operated, not the weights (as in lmops.train.stage)
_OPERATIONAL = {"mlflow_tracking_uri", "experiment", "storage_path", "max_failures", "resume", "keep_checkpoints"}
# variant -> (the stage named in its manifest, the name of its checkpoint input): lineage follows these
VARIANT_STAGES = {"int8": ("quantize", "checkpoint"), "pruned": ("prune", "checkpoint"), "student": ("distill", "teacher")}


def checkpoint_digest(checkpoint_dir: Path) -> str:
    """The checkpoint's content digest: its manifest's, verified, when it has one (a train stage output),
    else computed from its files (a directory trained elsewhere)."""
    if not checkpoint_dir.is_dir():
        raise CompressError(f"{checkpoint_dir}: checkpoint directory not found")
    if not (checkpoint_dir / "config.json").is_file():
        raise CompressError(f"{checkpoint_dir}: not a Hugging Face model directory (no config.json)")
    if (checkpoint_dir / MANIFEST).is_file():
        return verify(checkpoint_dir).digest  # ManifestError names a changed or missing file
    return content_digest(file_table(checkpoint_dir))


def compress_stage(cfg: Config, checkpoint_dir: str | Path, tokens_dir: str | Path, out_dir: str | Path, *,
                   cache_dir: str | Path | None = None,
                   log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> StageResult:
    checkpoint_dir, tokens_dir = Path(checkpoint_dir), Path(tokens_dir)
    ckpt_digest = checkpoint_digest(checkpoint_dir)
    info = open_tokens(tokens_dir, splits=("train", "val", "test"))
    cc = cfg.compress
    inputs = {"checkpoint": {"digest": ckpt_digest, "path": str(checkpoint_dir)},
              "tokens": {"digest": info.manifest.digest, "path": str(tokens_dir)}}
    ecfg = cfg.evaluate.model_copy(update={"device": "cpu"})
    config = {"compress": cc.model_dump(mode="json"), "evaluate": ecfg.model_dump(mode="json"),
              # recovery fine-tune and distillation train with these
              "train": cfg.train.model_dump(mode="json", exclude=_OPERATIONAL)}

    def produce(tmp: Path) -> dict[str, Any]:
        from lmops.evaluate.metrics import evaluate_model

        def score(model_dir: Path, name: str) -> dict[str, Any]:
            metrics = evaluate_model(model_dir, tokens_dir, ecfg, split="test")
            metrics["model_dir"] = str(Path(out_dir) / name) if name != "fp32" else str(checkpoint_dir)
            dest = tmp / "fp32_eval.json" if name == "fp32" else model_dir / "eval.json"
            dest.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            return metrics

        from lmops.compress.source import load_fp32  # here: a cached stage answers without torch

        load_fp32(checkpoint_dir)  # a directory that does not load fails here, with its path, not deep in evaluate
        baseline = score(checkpoint_dir, "fp32")
        log(f"[compress] fp32: perplexity {baseline['perplexity']:.3f}; {bits_per_byte_text(baseline['bits_per_byte'])}")
        extras: dict[str, dict[str, Any]] = {}
        if cc.int8.enabled:
            from lmops.compress.quantize import quantize_dir

            extras["int8"] = timed(lambda: quantize_dir(checkpoint_dir, tmp / "int8", cc.int8))
        if cc.prune.enabled:
            from lmops.compress.prune import prune_dir

            extras["pruned"] = timed(lambda: prune_dir(checkpoint_dir, tmp / "pruned", cfg, tokens_dir))
        if cc.distill.enabled:
            from lmops.compress.distill import distill_dir

            extras["student"] = timed(lambda: distill_dir(cfg, checkpoint_dir, tokens_dir, tmp / "student",
                                                          teacher_digest=ckpt_digest, log=log))
        rows = [row("fp32", baseline, baseline, None, {})]
        for name, extra in extras.items():
            metrics = score(tmp / name, name)
            verdict = gates.check(metrics, baseline, cc.gates.get(name, {}))
            rows.append(row(name, metrics, baseline, verdict, extra))
            seal_variant(tmp / name, name, rows[-1], config, inputs)
            log(f"[compress] {name}: perplexity x{rows[-1]['perplexity_ratio']:.3f}, "
                f"{bits_per_byte_text(metrics['bits_per_byte'])}, size x{rows[-1]['size_ratio']:.3f}"
                f" -> {'PASS' if verdict.passed else 'FAIL'} (made in {extra['seconds']:.1f}s)")
        table = {"baseline": "fp32", "device": "cpu", "rows": rows}
        (tmp / "compress.json").write_text(json.dumps(table, indent=2) + "\n")
        plot_table(rows, cc.gates, tmp / "compress.png")
        return {"counts": {"variants": [r["variant"] for r in rows[1:]],
                           "passed": [r["variant"] for r in rows[1:] if r["passed"]]},
                "metrics": {r["variant"]: {k: r[k] for k in ("perplexity", "perplexity_ratio", "bits_per_byte",
                                                              "size_ratio", "latency_ratio", "passed")} for r in rows}}

    return run_stage("compress", out_dir, code=CODE, config=config, inputs=inputs, produce=produce,
                     cache_dir=cache_dir, log=log)


def timed(make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A variant's extras with the seconds it took to make (the budget each compression spends)."""
    started = time.perf_counter()
    extra = make()
    return {**extra, "seconds": round(time.perf_counter() - started, 2)}


def seal_variant(variant_dir: Path, name: str, table_row: dict[str, Any], config: dict[str, Any],
                 inputs: dict[str, dict[str, Any]]) -> None:
    """Give a variant directory its own manifest: stage, config, the checkpoint (and tokens) it was made from,
    its files, and its row of the table (verdict included)."""
    stage, source = VARIANT_STAGES[name]
    own_inputs = {source: inputs["checkpoint"], "tokens": inputs["tokens"]}
    key = stage_key(stage, CODE, config, {k: v["digest"] for k, v in own_inputs.items()})
    write_manifest(variant_dir, stage=stage, key=key, config=config, inputs=own_inputs,
                   counts={k: v for k, v in table_row.items() if k not in ("variant", "path", "reasons", "seconds")},
                   metrics={"passed": table_row["passed"], "reasons": table_row["reasons"]},
                   started=time.time() - table_row["seconds"])  # the manifest's seconds: the time to make it


def row(variant: str, metrics: dict[str, Any], baseline: dict[str, Any], verdict: gates.Verdict | None,
        extra: dict[str, Any]) -> dict[str, Any]:
    """One line of compress.json: the figures, their ratios to fp32, and the verdict with its reasons."""
    def ratio(key: str) -> float:
        return metrics[key] / baseline[key]

    return {"variant": variant, "path": "" if variant == "fp32" else variant,
            "size_bytes": metrics["size_bytes"], "size_ratio": ratio("size_bytes"),
            "params": metrics["params"],
            "latency_ms_per_token": metrics["latency_ms_per_token"], "latency_ratio": ratio("latency_ms_per_token"),
            "perplexity": metrics["perplexity"], "perplexity_ratio": ratio("perplexity"),
            "bits_per_byte": metrics.get("bits_per_byte"),
            "passed": True if verdict is None else verdict.passed,
            "reasons": ["baseline"] if verdict is None else verdict.reasons,
            **extra}


def plot_table(rows: list[dict[str, Any]], rules: dict[str, Any], path: Path) -> None:
    """Perplexity, size and latency relative to fp32 per variant; green passed its gates, red did not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    colors = ["0.6" if r["variant"] == "fp32" else ("tab:green" if r["passed"] else "tab:red") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5), dpi=100)
    for ax, key, title in zip(axes, ("perplexity_ratio", "size_ratio", "latency_ratio"),
                              ("perplexity / fp32", "size on disk / fp32", "CPU latency per token / fp32")):
        values = [r[key] for r in rows]
        ax.bar(names, values, color=colors)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        if key == "perplexity_ratio":  # the budgets, where a variant has a max_ratio on perplexity
            for i, name in enumerate(names):
                rule = rules.get(name, {}).get("perplexity")
                if rule is not None and rule.max_ratio is not None:
                    ax.hlines(rule.max_ratio, i - 0.4, i + 0.4, colors="k", linestyles="--")
        ax.axhline(1.0, color="0.3", lw=0.8)
        ax.set_title(title, fontsize=10)
    fig.suptitle("compression variants (dashed: perplexity budget; green: passed, red: failed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
