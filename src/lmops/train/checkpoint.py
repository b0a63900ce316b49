"""Training checkpoints: save, load, and tell complete ones from half-written ones.

A checkpoint directory holds ``model/`` (a Hugging Face model directory, safetensors), ``optimizer.pt``
(optimizer state and every rank's sampler + torch RNG state) and ``trainer_state.json`` (step,
metric history, resumes). The learning-rate schedule has no state of its own: it is a pure function
of the step (``lr_at``), so restoring the step restores the schedule.

``checkpoint.json`` is written last and lists every file with its size. A checkpoint is *complete*
only when that marker exists and every file it lists has that size — a crash or an interrupted
upload in the middle of saving leaves an incomplete checkpoint, which resume skips.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from lmops import storage
from lmops.model import save_model_dir

MARKER = "checkpoint.json"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
_STEP_DIR = re.compile(r"checkpoint_")


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rank_states: list[dict[str, Any]], step: int, state: dict[str, Any],
                    tokenizer_dir: str | Path | None) -> Path:
    """Write a complete checkpoint into ``path`` (the marker last). ``model`` is the bare HF model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model_dir(model, path / "model", tokenizer_dir)
    torch.save({"optimizer": optimizer.state_dict(), "ranks": rank_states}, path / OPTIMIZER)
    (path / STATE).write_text(json.dumps({**state, "step": step}, indent=1) + "\n")
    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
    (path / MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n")
    return path


def read_marker(path: str) -> dict[str, Any] | None:
    """The marker of a local or s3:// checkpoint directory, or None when absent or unreadable."""
    try:
        return json.loads(storage.read_bytes(f"{str(path).rstrip('/')}/{MARKER}"))
    except (storage.StorageError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_complete(path: str) -> bool:
    marker = read_marker(path)
    if marker is None:
        return False
    try:
        sizes = {e.uri[len(str(path).rstrip("/")) + 1:]: e.size for e in storage.list_files(str(path))}
    except storage.StorageError:
        return False
    return all(sizes.get(rel) == size for rel, size in marker["files"].items())


def latest_complete(run_dir: str) -> tuple[str, int] | None:
    """(path, step) of the complete checkpoint with the highest step under a Ray run directory."""
    files = storage.list_files(run_dir, missing_ok=True)  # nothing there yet: a fresh start
    base = run_dir.rstrip("/")
    candidates = sorted({e.uri[len(base) + 1:].split("/")[0] for e in files if e.uri.endswith("/" + MARKER)})
    best: tuple[str, int] | None = None
    for name in candidates:
        if not _STEP_DIR.match(name):
            continue
        path = f"{base}/{name}"
        marker = read_marker(path)
        if marker is not None and is_complete(path) and (best is None or marker["step"] > best[1]):
            best = (path, int(marker["step"]))
    return best


def load_model(path: str | Path) -> torch.nn.Module:
    """The checkpoint's model, built from its own config and weights (sharded or not)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(Path(path) / "model", attn_implementation="sdpa")


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer,
                        device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load the optimizer state; return (trainer state, per-rank sampler/RNG states)."""
    path = Path(path)
    # weights_only=False: the blob holds our own sampler states (plain dicts, numpy RNG state)
    blob = torch.load(path / OPTIMIZER, map_location=device, weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    return json.loads((path / STATE).read_text()), blob["ranks"]
