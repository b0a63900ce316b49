"""Stage 3 ``train``: tokens/ -> checkpoint/ (a Hugging Face model directory) through Ray Train.

The output loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
without lmops, and carries ``train_metrics.json`` (summary, history, resumes) and ``loss_curve.png``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from lmops import storage
from lmops.config import Config
from lmops.data.tokens import open_tokens
from lmops.manifest import StageResult, code_digest, run_stage, stage_key
from lmops.registry import TrainingRun, tracking_uri

# Settings that change where and how a run is operated, not the weights it produces: kept out of the
# cache key so that, e.g., pointing at another MLflow server does not retrain.
OPERATIONAL = {"mlflow_tracking_uri", "experiment", "storage_path", "max_failures", "resume", "keep_checkpoints",
               "wait_for_resources_s"}
_HERE = Path(__file__).resolve().parent
# rayjob.py only launches a run elsewhere; it does not change the weights a run produces
CODE = code_digest(*sorted(p for p in _HERE.glob("*.py") if p.name != "rayjob.py"), _HERE.parent / "model.py")


def train_stage(cfg: Config, tokens_dir: str | Path, out_dir: str | Path, *, cache_dir: str | Path | None = None,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
                tokens_source: str | None = None) -> StageResult:
    """``tokens_source``: where ``tokens_dir`` was fetched from (an s3:// prefix), for Ray workers on nodes that
    join later (a replaced pod) and must fetch their own copy."""
    tokens_dir = Path(tokens_dir)
    info = open_tokens(tokens_dir, splits=("train", "val"))
    inputs: dict[str, dict[str, Any]] = {"tokens": {"digest": info.manifest.digest, "path": str(tokens_dir)}}
    if cfg.model.pretrained:
        inputs["pretrained"] = {"digest": _tree_digest(cfg.model.pretrained), "path": cfg.model.pretrained}
    config = {"model": cfg.model.model_dump(mode="json"),
              "train": cfg.train.model_dump(mode="json", exclude=OPERATIONAL)}
    key = stage_key("train", CODE, config, {k: v["digest"] for k, v in inputs.items()})
    run_name = f"lmops-train-{key[:16]}"
    storage_path = cfg.train.storage_path or str((Path(cfg.workdir) / "ray").resolve())

    def produce(tmp: Path) -> dict[str, Any]:
        # imported here: Ray (and torch) take seconds to import, which a cached re-run need not pay
        from lmops.train.ray_train import run_ray_training

        uri = tracking_uri(cfg.train.mlflow_tracking_uri)
        run = None
        if uri:
            run = TrainingRun(uri, cfg.train.experiment, run_name, params=config,
                              tags={"lmops.stage": "train", "lmops.tokens_digest": info.manifest.digest,
                                    "lmops.train_key": key})
        try:
            final, state = run_ray_training(cfg, tokens_dir, run_name=run_name, storage_path=storage_path,
                                            tracking=run.worker_handle if run else None, tokens_source=tokens_source)
            shutil.copytree(final / "model", tmp, dirs_exist_ok=True)
            shutil.rmtree(final, ignore_errors=True)
            summary = summarize(state, cfg)
            (tmp / "train_metrics.json").write_text(json.dumps({**summary, "history": state["history"],
                                                                  "resumes": state.get("resumes", [])}, indent=1) + "\n")
            plot_loss_curve(state["history"], tmp / "loss_curve.png")
            if run:
                run.log_artifact(tmp / "loss_curve.png")
                run.log_artifact(tmp / "train_metrics.json")
                run.finish(ok=True)
        except BaseException:
            if run:
                run.finish(ok=False)
            raise
        return {"counts": {"steps": summary["steps"], "tokens_seen": summary["tokens_seen"]}, "metrics": summary}

    return run_stage("train", out_dir, code=CODE, config=config, inputs=inputs, produce=produce,
                     cache_dir=cache_dir, log=log)


def summarize(state: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Final figures from the history rank 0 kept (tokens/s is per rank in the log; here, all ranks)."""
    hist = state["history"]
    tc = cfg.train
    train = [h for h in hist if "loss" in h]
    steady = train[1:] or train  # the first interval carries start-up and compilation
    per_rank = sum(h["tokens_per_s"] for h in steady) / max(len(steady), 1)
    vals = [h["val_loss"] for h in hist if "val_loss" in h]
    mfus = [h["mfu"] for h in steady if h.get("mfu") is not None]
    return {
        "steps": state["step"],
        "first_loss": train[0]["loss"] if train else None,
        "final_loss": train[-1]["loss"] if train else None,
        "first_val_loss": vals[0] if vals else None,
        "val_loss": vals[-1] if vals else None,
        "tokens_per_s": per_rank * tc.num_workers,
        "mfu": sum(mfus) / len(mfus) if mfus else None,
        "tokens_seen": state["step"] * tc.micro_batch_size * tc.block_size * tc.grad_accum * tc.num_workers,
        "num_workers": tc.num_workers,
        "resumed_from": [r["step"] for r in state.get("resumes", [])],
    }


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _tree_digest(uri: str) -> str:
    """Content digest of a pretrained model directory (local files hashed; S3 by ETag)."""
    from lmops.config import sha256_json
    from lmops.manifest import file_sha256

    entries = storage.list_files(uri)
    base = uri.rstrip("/")
    return sha256_json({e.uri[len(base):]: (e.etag or file_sha256(e.uri)) for e in entries})
