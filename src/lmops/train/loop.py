"""The plain single-process training loop — no Ray import, so it runs and is tested on its own.

The Ray Train wrapper reuses every piece here and differs in two places (Ray's quick-start shape)::

    model = ray.train.torch.prepare_model(model)                       # DDP + device placement
    batches = Batches(train_ids, mbs, block, seed=seed, rank=ctx.get_world_rank(), world_size=ctx.get_world_size())

and then calls the same ``fit`` (or ``train_step`` in its own loop) with ``on_step`` reporting metrics and
saving checkpoints (model, optimizer, ``Batches.state_dict()``, step) and ``start_step`` when resuming.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from lmops.config import Config, TrainConfig
from lmops.data.tokens import load_split, open_tokens
from lmops.devices import autocast, resolve_device, resolve_dtype
from lmops.model import Vocab, build_model, save_model_dir
from lmops.train.data import Batch, Batches
from lmops.train.flops import device_name, mfu, model_flops_per_token
from lmops.train.optim import lr_at, make_optimizer, set_lr


# ---------------------------------------------------------------- wrappers
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def maybe_compile(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    return torch.compile(model) if cfg.compile else model


def find_ddp(model: torch.nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper, also when torch.compile wraps it (compile(prepare_model(m)))."""
    while model is not None:
        if isinstance(model, DistributedDataParallel):
            return model
        model = getattr(model, "_orig_mod", None)
    return None


# ---------------------------------------------------------------- one step
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; targets are already shifted by the sampler. Computed in fp32
    (bf16 log-softmax over a large vocabulary loses precision)."""
    logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def loss_function(cfg: TrainConfig) -> LossFn:
    """lm_loss, compiled when cfg.compile: compiling the loss with the model call inside lets inductor
    fuse the fp32 upcast, log-softmax and NLL over the (tokens x vocab) logits instead of writing fp32
    logits out (H100, gpt2-124m, bf16: 411k -> 451k tok/s with a 20k vocab, 377k -> 443k with 32k).
    An already compiled model inside is traced as its original module, so the caller's compile(model)
    does no harm."""
    return torch.compile(lm_loss) if cfg.compile else lm_loss


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cuda":  # pinned host memory lets the copy overlap with compute
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)  # type: ignore[return-value]
    return batch


@dataclass
class StepOutput:
    loss: torch.Tensor
    """Mean loss over the step's micro-batches, detached, still on the device (no host sync)."""
    grad_norm: torch.Tensor | None
    """Global gradient norm before clipping (None when clipping is off)."""
    tokens: int


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[Batch], *,
               lr: float, grad_accum: int = 1, grad_clip: float = 0.0,
               device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
               loss_fn: LossFn = lm_loss) -> StepOutput:
    """One optimizer step over ``grad_accum`` micro-batches drawn from ``batches``."""
    optimizer.zero_grad(set_to_none=True)
    ddp = find_ddp(model)
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for micro in range(grad_accum):
        x, y = to_device(next(batches), device)
        # DDP: all-reduce gradients only on the last micro-batch, not on every backward
        sync = ddp is None or micro == grad_accum - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with autocast(device, dtype):
                loss = loss_fn(model, x, y)
            # dividing by grad_accum makes the summed gradient the mean over all micro-batches
            (loss / grad_accum).backward()
        loss_sum += loss.detach()
        tokens += y.numel()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
    set_lr(optimizer, lr)
    optimizer.step()
    return StepOutput(loss_sum / grad_accum, grad_norm, tokens)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, batches: list[Batch], *, device: torch.device,
                  dtype: torch.dtype, loss_fn: LossFn = lm_loss) -> float:
    """Mean loss over a fixed list of batches (the same windows every time, so values are comparable)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for batch in batches:
        x, y = to_device(batch, device)
        with autocast(device, dtype):
            total += loss_fn(model, x, y)
    model.train(was_training)
    return (total / len(batches)).item()


# ---------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    steps: int
    final_loss: float
    """Mean training loss over the last log interval."""
    val_loss: float | None
    """Last validation loss (None without validation batches)."""
    tokens_per_s: float
    """Steady state: the first log interval (warm-up, compilation) is left out when there are more."""
    mfu: float | None
    seconds: float
    tokens: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_log(step: int, max_steps: int, loss: float, lr: float, tokens_per_s: float, mfu_value: float | None) -> str:
    line = f"step {step}/{max_steps} | loss {loss:.3f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s"
    return line if mfu_value is None else f"{line} | mfu {100 * mfu_value:.1f}%"


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_batches: Iterator[Batch], cfg: TrainConfig, *,
        device: torch.device, dtype: torch.dtype, val_batches: list[Batch] | None = None, start_step: int = 0,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        log: Callable[[str], None] | None = print, loss_fn: LossFn | None = None) -> TrainResult:
    """Train from ``start_step`` to ``cfg.max_steps``.

    ``loss_fn`` replaces the training objective (e.g. distillation); validation keeps the plain LM loss,
    so ``val_loss`` stays comparable with any other run's.

    ``on_step(step, metrics)`` runs after every optimizer step (``step`` = steps done) and once with
    step 0 for the initial validation; ``metrics`` is empty except on log/eval steps. Validation runs every ``eval_every`` steps, at the end, and once
    before the first step of a fresh run (the starting point of the curve).
    """
    model.train()
    val_loss_fn = loss_function(cfg)
    train_loss_fn = loss_fn or val_loss_fn
    flops = model_flops_per_token(unwrap(model), cfg.block_size)
    dev_name = device_name(device)
    tokens_per_step = cfg.micro_batch_size * cfg.block_size * cfg.grad_accum
    history: list[dict[str, Any]] = []
    val_loss = None
    if val_batches and start_step == 0:
        val_loss = estimate_loss(model, val_batches, device=device, dtype=dtype, loss_fn=val_loss_fn)
        history.append({"step": 0, "val_loss": val_loss})
        _log(log, f"step 0/{cfg.max_steps} | val loss {val_loss:.3f}")
        if on_step is not None:
            on_step(0, history[-1])  # the curve's starting point reaches callers' histories too

    started = interval_start = time.perf_counter()
    loss_acc, n_acc = torch.zeros((), device=device), 0
    intervals: list[tuple[int, float]] = []  # (tokens, seconds) per log interval
    record: dict[str, Any] = {}
    for step in range(start_step, cfg.max_steps):
        lr = lr_at(step, cfg)
        out = train_step(model, optimizer, train_batches, lr=lr, grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip,
                         device=device, dtype=dtype, loss_fn=train_loss_fn)
        loss_acc += out.loss
        n_acc += 1
        done = step + 1
        record = {}
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            loss = (loss_acc / n_acc).item()  # the only host sync: once per log interval
            elapsed = time.perf_counter() - interval_start
            tok_s = n_acc * tokens_per_step / elapsed
            util = mfu(tok_s, flops, dev_name, dtype)
            intervals.append((n_acc * tokens_per_step, elapsed))
            record = {"step": done, "loss": loss, "lr": lr, "tokens_per_s": tok_s, "mfu": util}
            if out.grad_norm is not None:
                record["grad_norm"] = out.grad_norm.item()
            _log(log, format_log(done, cfg.max_steps, loss, lr, tok_s, util))
            loss_acc, n_acc = torch.zeros((), device=device), 0
            interval_start = time.perf_counter()
        if val_batches and (done % cfg.eval_every == 0 or done == cfg.max_steps):
            eval_start = time.perf_counter()
            val_loss = estimate_loss(model, val_batches, device=device, dtype=dtype, loss_fn=val_loss_fn)
            record = {**record, "step": done, "val_loss": val_loss}
            _log(log, f"step {done}/{cfg.max_steps} | val loss {val_loss:.3f}")
            interval_start += time.perf_counter() - eval_start  # validation time is not training throughput
        if record:
            history.append(record)
        if on_step is not None:
            on_step(done, record)

    steady = intervals[1:] or intervals
    tok_s = sum(t for t, _ in steady) / max(sum(s for _, s in steady), 1e-9)
    last_loss = next((h["loss"] for h in reversed(history) if "loss" in h), float("nan"))
    return TrainResult(
        steps=cfg.max_steps, final_loss=last_loss, val_loss=val_loss, tokens_per_s=tok_s,
        mfu=mfu(tok_s, flops, dev_name, dtype), seconds=time.perf_counter() - started,
        tokens=(cfg.max_steps - start_step) * tokens_per_step, history=history,
    )


def _log(log: Callable[[str], None] | None, line: str) -> None:
    if log is not None:
        log(line)


# ---------------------------------------------------------------- convenience: tokens dir -> HF model dir
def train_single(cfg: Config, tokens_dir: str | Path, out_dir: str | Path, *,
                 log: Callable[[str], None] | None = print) -> TrainResult:
    """Train ``cfg.model`` on ``tokens_dir`` in this process and save a HF model directory to ``out_dir``
    (safetensors, generation config, tokenizer files, train_metrics.json). No manifest, no Ray."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    info = open_tokens(tokens_dir, splits=("train", "val"))
    device = resolve_device(tc.device)
    dtype = resolve_dtype(tc.dtype, device)
    model = build_model(cfg.model, Vocab.from_tokens(info), block_size=tc.block_size).to(device)
    optimizer = make_optimizer(model, tc, device.type)
    train_batches = Batches(load_split(info, "train"), tc.micro_batch_size, tc.block_size, seed=tc.seed)
    # a different seed from training's, fixed for the whole run
    val_batches = Batches(load_split(info, "val"), tc.micro_batch_size, tc.block_size, seed=tc.seed + 1).take(tc.eval_batches)
    result = fit(maybe_compile(model, tc), optimizer, train_batches, tc, device=device, dtype=dtype,
                 val_batches=val_batches, log=log)
    out = Path(out_dir)
    save_model_dir(model, out, info.tokenizer_dir)
    (out / "train_metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
