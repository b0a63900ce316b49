"""Stage 4 ``evaluate``: checkpoint/ + tokens/ -> eval/ (``eval.json`` metrics, ``gate.json`` verdict).

The verdict compares the candidate with a baseline's ``eval.json`` (normally the current champion's)
under the ``evaluate.gate`` rules; with no baseline only absolute bounds apply. The stage succeeds
either way — the verdict is data that registration and promotion act on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from lmops import gates
from lmops.config import Config
from lmops.errors import LmopsError
from lmops.evaluate.report import bits_per_byte_text, compressors_text, scored_text
from lmops.manifest import StageResult, code_digest, input_digest, run_stage, sha256_file

_HERE = Path(__file__).resolve().parent
CODE = code_digest(*sorted(_HERE.glob("*.py")), _HERE.parent / "gates.py")  # the evaluate package and the gates


def evaluate_stage(cfg: Config, model_dir: str | Path, tokens_dir: str | Path, out_dir: str | Path, *,
                   baseline: str | Path | None = None, cache_dir: str | Path | None = None,
                   log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> StageResult:
    model_dir, tokens_dir = Path(model_dir), Path(tokens_dir)
    inputs: dict[str, dict[str, Any]] = {
        "model": {"digest": input_digest(model_dir), "path": str(model_dir)},
        "tokens": {"digest": input_digest(tokens_dir, "tokenize"), "path": str(tokens_dir)},
    }
    baseline_metrics = None
    if baseline is not None:
        baseline = eval_path(baseline)
        baseline_metrics = read_eval(baseline)
        inputs["baseline"] = {"digest": sha256_file(baseline), "path": str(baseline)}

    def produce(tmp: Path) -> dict[str, Any]:
        # here, not at the top: a cached stage answers without loading torch and transformers
        from lmops.evaluate import compressors
        from lmops.evaluate.metrics import evaluate_model

        metrics = evaluate_model(model_dir, tokens_dir, cfg.evaluate)
        metrics.update(compressors.split_bits_per_byte(tokens_dir, "test"))  # the line to beat, same text
        (tmp / "eval.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        verdict = gates.check(metrics, baseline_metrics, cfg.evaluate.gate)
        (tmp / "gate.json").write_text(json.dumps(verdict.to_dict(), indent=2) + "\n")
        log(f"[evaluate] perplexity {metrics['perplexity']:.2f}; {bits_per_byte_text(metrics['bits_per_byte'])} "
            f"({scored_text(metrics['scored_tokens'], metrics['split_tokens'])}); "
            f"gate {'PASS' if verdict.passed else 'FAIL'}: " + "; ".join(verdict.reasons))
        if "xz_9e_bits_per_byte" in metrics:
            log(f"[evaluate] {compressors_text(metrics)}")
        return {"counts": {k: metrics.get(k) for k in ("blocks", "scored_tokens", "split_tokens", "scored_bytes")},
                "metrics": {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                            "gate_passed": verdict.passed}}

    return run_stage("evaluate", out_dir, code=CODE, config=cfg.evaluate.model_dump(mode="json"), inputs=inputs,
                     produce=produce, cache_dir=cache_dir, log=log)


def eval_path(path: str | Path) -> Path:
    """An eval.json file, or an evaluate output directory holding one."""
    path = Path(path)
    return path / "eval.json" if path.is_dir() else path


def read_eval(path: str | Path) -> dict[str, Any]:
    path = eval_path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LmopsError(f"{path}: baseline eval.json not found") from None
    except json.JSONDecodeError as e:
        raise LmopsError(f"{path}: baseline is not valid JSON ({e})") from None
