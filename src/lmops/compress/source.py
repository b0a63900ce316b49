"""Reading the fp32 checkpoint every variant starts from, and copying its non-weight files to a variant."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from lmops.compress import CompressError

# What a variant directory takes over from its checkpoint unchanged: the tokenizer and generation defaults.
# Weights, config.json (a student's differs) and the training outputs are the variant's own business.
_NOT_COPIED = {"manifest.json", "train_metrics.json", "loss_curve.png", "eval.json", "quantization.json"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_fp32(checkpoint_dir: str | Path) -> PreTrainedModel:
    """The checkpoint as an fp32 model in eval mode, or a CompressError naming the directory."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise CompressError(f"{path}: checkpoint directory not found")
    if not (path / "config.json").is_file():
        raise CompressError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    except Exception as e:  # transformers raises OSError, ValueError, safetensors errors... for a bad directory
        raise CompressError(f"{path}: cannot load the checkpoint: {type(e).__name__}: {e}") from e
    return model.eval()


def copy_side_files(checkpoint_dir: str | Path, out_dir: str | Path, *, include_config: bool = True) -> None:
    """Tokenizer files, generation_config.json and (unless told otherwise) config.json into out_dir."""
    src, out = Path(checkpoint_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if not f.is_file() or f.name in _NOT_COPIED or f.name.endswith(_WEIGHT_SUFFIXES):
            continue
        if f.name == "config.json" and not include_config:
            continue
        shutil.copy2(f, out / f.name)
