"""Evaluation (stage 4): one function scores any candidate model directory on a token split.

Metrics (``eval.json``):
- ``perplexity`` = exp(total NLL / total scored tokens) over fixed-length windows of ``block_size``
  tokens started every ``stride`` tokens. With stride < block_size the windows overlap and only the
  tokens no earlier window scored count (Hugging Face's sliding-window recipe), so every token is
  scored once, with up to block_size - stride tokens of extra context. A token is only scored with at
  least one token of context in its window: with stride = block_size each window scores block_size - 1
  tokens, exactly what the model's own ``labels=`` loss averages over. Every window of the split is
  scored unless ``max_blocks`` caps them; ``scored_tokens`` of ``split_tokens`` says how much was.
- ``bits_per_byte`` = total NLL in bits / ``scored_bytes``, the UTF-8 bytes of exactly the scored target
  tokens (lmops.evaluate.token_bytes; EOS is 0 bytes, its NLL still counts). Unlike perplexity it compares
  models with different tokenizers. None (with ``scored_bytes`` None) for a tokenizer that is not
  byte-level.
- ``eval_tokens_per_s``: tokens fed through the model per second of the perplexity pass (overlap
  context included: it is work done).
- ``latency_ms_per_token``: greedy generation at batch 1, wall time / new tokens (the prompt's prefill
  amortised in), median of ``latency_repeats`` runs after one warm-up run.
- ``size_bytes``: bytes of the weight files on disk; ``params``: parameters (shared tensors once).

Always fp32: candidates (fp32, int8, pruned, distilled) are compared against each other and against the
champion's eval.json, so the numbers must not depend on an autocast choice.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedModel

from lmops.config import EvaluateConfig
from lmops.evaluate.token_bytes import token_byte_lengths
from lmops.data.tokens import load_split, open_tokens
from lmops.devices import resolve_device, synchronize
from lmops.model import check_vocab, count_params

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class EvaluationError(RuntimeError):
    """A model directory or token split that cannot be evaluated; the message names it."""


def evaluate_model(model_dir: str | Path, tokens_dir: str | Path, cfg: EvaluateConfig, split: str = "test",
                   out: str | Path | None = None) -> dict[str, Any]:
    """Score a HF model directory on ``split`` of a tokens/ directory; write eval.json when ``out`` is
    given (a .json path, or a directory to put eval.json in)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise EvaluationError(f"{model_dir}: not a model directory (no config.json)")
    info = open_tokens(tokens_dir, splits=(split,))
    ids = load_split(info, split)
    device = resolve_device(cfg.device, setting="evaluate.device")
    if _is_int8_dir(model_dir):
        device = torch.device("cpu")  # dynamic int8 kernels (fbgemm) exist for CPUs only
    model = load_candidate(model_dir, device)
    check_vocab(model, info.vocab_size, where=f"evaluate {model_dir}")
    metrics = evaluate_loaded(model, ids, cfg, device, token_byte_lengths(info.tokenizer_dir))
    metrics.update(split=split, size_bytes=weights_bytes(model_dir), model_dir=str(model_dir),
                   tokens_digest=info.manifest.digest)
    if out is not None:
        path = Path(out)
        path = path if path.suffix == ".json" else path / "eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def load_candidate(model_dir: Path, device: torch.device) -> PreTrainedModel:
    """Load a candidate for scoring. (Compressed formats that from_pretrained cannot read plug in here.)"""
    if _is_int8_dir(model_dir):
        # lazy: the compress stage owns the int8 format, so its reader and writer never drift apart
        from lmops.compress.quantize import load_quantized

        return load_quantized(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(device).eval()


def _is_int8_dir(model_dir: Path) -> bool:
    return (Path(model_dir) / "quantization.json").is_file()


def evaluate_loaded(model: torch.nn.Module, ids: np.ndarray, cfg: EvaluateConfig, device: torch.device,
                    token_bytes: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics that need only the model in memory, the token ids and their byte lengths."""
    ppl = perplexity(model, ids, cfg.block_size, cfg.stride or cfg.block_size, cfg.batch_size, device, cfg.max_blocks,
                     token_bytes)
    lat = generation_latency(model, ids, cfg.latency_prompt_tokens, cfg.latency_new_tokens, cfg.latency_repeats, device)
    return {**ppl, **lat, "params": count_params(model), "device": str(device)}


def windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, score_from) per window: tokens [begin, end) are fed, targets at absolute positions
    [score_from, end) are scored. score_from skips what earlier windows scored and the window's first
    token (nothing in the window precedes it)."""
    out, prev_end = [], 0
    for begin in range(0, max(n_tokens - 1, 0), stride):
        end = min(begin + block_size, n_tokens)
        score_from = max(prev_end, begin + 1)
        if end > score_from:
            out.append((begin, end, score_from))
        prev_end = end
        if end == n_tokens:
            break
    return out


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: np.ndarray, block_size: int, stride: int, batch_size: int,
               device: torch.device, max_blocks: int | None = None,
               token_bytes: np.ndarray | None = None) -> dict[str, Any]:
    """Perplexity over the windows of ``ids`` (the first ``max_blocks`` of them; None = all), and bits per
    byte when ``token_bytes`` (bytes per token id) is given."""
    wins = windows(len(ids), block_size, stride)[:max_blocks]
    if not wins:
        raise EvaluationError(f"the split has {len(ids)} tokens: too few to score (need at least 2)")
    nll_sum, scored, fed = 0.0, 0, 0
    synchronize(device)
    start = time.perf_counter()
    for group in _batches_of_equal_length(wins, batch_size):
        x = torch.from_numpy(np.stack([ids[b:e] for b, e, _ in group]).astype(np.int64)).to(device)
        logits = model(input_ids=x, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="none")
        nll = nll.view(len(group), -1)
        # target j of a window sits at absolute position begin + 1 + j
        pos = torch.arange(1, x.size(1), device=device)
        mask = torch.stack([(b + pos) >= s for b, _, s in group])
        nll_sum += float(nll[mask].double().sum())
        scored += int(mask.sum())
        fed += x.numel()
    synchronize(device)
    seconds = time.perf_counter() - start
    mean_nll = nll_sum / scored
    n_bytes = None if token_bytes is None else scored_bytes(ids, wins, token_bytes)
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "scored_tokens": scored, "split_tokens": len(ids),
            "scored_bytes": n_bytes, "bits_per_byte": nll_sum / math.log(2) / n_bytes if n_bytes else None,
            "blocks": len(wins), "block_size": block_size, "stride": stride, "eval_tokens_per_s": fed / seconds,
            "eval_seconds": seconds}


def scored_bytes(ids: np.ndarray, wins: list[tuple[int, int, int]], token_bytes: np.ndarray) -> int:
    """UTF-8 bytes of exactly the target tokens the windows score (positions [score_from, end) of each)."""
    return sum(int(token_bytes[np.asarray(ids[s:e], dtype=np.int64)].sum()) for _, e, s in wins)


def _batches_of_equal_length(wins: list[tuple[int, int, int]], batch_size: int):
    """Consecutive windows of the same length, batch_size at a time (only the last window can be shorter)."""
    batch: list[tuple[int, int, int]] = []
    for w in wins:
        if batch and (len(batch) == batch_size or w[1] - w[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


@torch.no_grad()
def generation_latency(model: PreTrainedModel, ids: np.ndarray, prompt_tokens: int, new_tokens: int, repeats: int,
                       device: torch.device) -> dict[str, Any]:
    """Greedy decoding at batch 1 from the split's first tokens; ms per new token, median of repeats."""
    max_pos = getattr(model.config, "max_position_embeddings", prompt_tokens + new_tokens)
    prompt_tokens = max(1, min(prompt_tokens, len(ids), max_pos - new_tokens))
    prompt = torch.from_numpy(np.asarray(ids[:prompt_tokens], dtype=np.int64)).unsqueeze(0).to(device)
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens,  # EOS is suppressed, so every run generates the same count
                  do_sample=False, pad_token_id=model.config.pad_token_id)
    model.generate(prompt, **kwargs)  # warm-up: allocator, kernels, caches
    runs = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(prompt, **kwargs)
        synchronize(device)
        runs.append((time.perf_counter() - start) * 1000 / (out.shape[1] - prompt.shape[1]))
    return {"latency_ms_per_token": statistics.median(runs), "latency_prompt_tokens": prompt_tokens,
            "latency_new_tokens": new_tokens}


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
