"""Global magnitude pruning of the transformer's linear weights, with an optional recovery fine-tune.

Global, not per layer: one threshold over every prunable weight, so layers whose weights matter less
give up more of them. Prunable = the nn.Linear weights of the blocks; the token embedding and the LM
head (an output embedding, tied to the input one in our models) stay dense, as do norms and biases.

The recovery fine-tune is the ordinary ``lmops.train.loop.fit``; its ``on_step`` callback, which runs
after every optimizer step, multiplies the masks back in, so AdamW's momentum and weight decay can never
revive a pruned weight. The result is saved with ``save_model_dir``: the zeros are plain zeros in a plain
HF directory (no mask tensors, no hooks), loadable by ``AutoModelForCausalLM`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lmops.compress import CompressError
from lmops.compress.source import copy_side_files, load_fp32
from lmops.config import Config, PruneConfig


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The linear weights that may be pruned, by parameter name (embeddings and LM head excluded)."""
    embeddings = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        embeddings.add(id(head.weight))
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and id(m.weight) not in embeddings}


@torch.no_grad()
def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing the ``sparsity`` fraction of smallest |w| across all tensors together."""
    total = sum(w.numel() for w in weights.values())
    k = int(round(sparsity * total))
    if k == 0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    scores = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    threshold = torch.kthvalue(scores, k).values
    # ties at the threshold are pruned too; the achieved sparsity is measured and reported, never assumed
    return {n: w.detach().abs() > threshold for n, w in weights.items()}


@torch.no_grad()
def apply_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    for name, w in weights.items():
        w.mul_(masks[name].to(w.dtype))


def sparsity_of(weights: dict[str, torch.Tensor]) -> float:
    """Fraction of exact zeros."""
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros / max(sum(w.numel() for w in weights.values()), 1)


def recover(model: nn.Module, masks: dict[str, torch.Tensor], cfg: Config, tokens_dir: str | Path,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` for ``compress.prune.recovery_steps`` steps through the training loop, masks held."""
    from lmops.data.tokens import load_split, open_tokens
    from lmops.devices import resolve_device, resolve_dtype
    from lmops.train.data import Batches
    from lmops.train.loop import fit
    from lmops.train.optim import make_optimizer

    pc = cfg.compress.prune
    # constant small lr, no warm-up; everything else (batch, block, clipping, seed) as the model was trained
    tc = cfg.train.model_copy(update={"max_steps": pc.recovery_steps, "lr": pc.recovery_lr, "min_lr": pc.recovery_lr,
                                      "warmup_steps": 0, "compile": False,
                                      "log_every": max(1, pc.recovery_steps // 3)})
    torch.manual_seed(tc.seed)
    info = open_tokens(tokens_dir, splits=("train", "val"))
    device = resolve_device(tc.device)
    dtype = resolve_dtype(tc.dtype, device)
    model.to(device)
    masks = {n: m.to(device) for n, m in masks.items()}
    weights = prunable(model)
    optimizer = make_optimizer(model, tc, device.type)
    train = Batches(load_split(info, "train"), tc.micro_batch_size, tc.block_size, seed=tc.seed + 2)
    val = Batches(load_split(info, "val"), tc.micro_batch_size, tc.block_size, seed=tc.seed + 1).take(tc.eval_batches)
    tc = tc.model_copy(update={"eval_every": pc.recovery_steps})  # validate at the start and the end only
    result = fit(model, optimizer, train, tc, device=device, dtype=dtype, val_batches=val,
                 on_step=lambda step, record: apply_masks(weights, masks), log=log)
    model.cpu().eval()
    vals = [h["val_loss"] for h in result.history if "val_loss" in h]
    return {"recovery_steps": pc.recovery_steps, "val_loss_before_recovery": vals[0] if vals else None,
            "val_loss_after_recovery": vals[-1] if vals else None}


def prune_dir(checkpoint_dir: str | Path, out_dir: str | Path, cfg: Config, tokens_dir: str | Path | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """fp32 HF directory -> pruned HF directory (zeros permanent); returns the sparsity achieved and more."""
    pc: PruneConfig = cfg.compress.prune
    model = load_fp32(checkpoint_dir)
    weights = prunable(model)
    if not weights:
        raise CompressError(f"{checkpoint_dir}: no prunable nn.Linear weights (GPT-2 style Conv1D is not supported)")
    masks = magnitude_masks(weights, pc.sparsity)
    apply_masks(weights, masks)
    report: dict[str, Any] = {"target_sparsity": pc.sparsity, "prunable_params": sum(w.numel() for w in weights.values())}
    if pc.recovery_steps > 0:
        if tokens_dir is None:
            raise CompressError("compress.prune.recovery_steps > 0 needs the tokens directory to fine-tune on")
        report.update(recover(model, masks, cfg, tokens_dir, log=log))
    report["sparsity"] = sparsity_of(prunable(model))
    copy_side_files(checkpoint_dir, out_dir)
    model.save_pretrained(out_dir)  # the checkpoint's generation_config.json was copied above
    return report
