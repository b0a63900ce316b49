"""Batched autoregressive generation with per-request settings, independent of any server.

One forward pass serves a whole micro-batch: prompts are left-padded so every row's next token sits
in the last column, and each row keeps its own temperature, top-p, seed, token budget and stop
state. A row that has finished keeps riding along (its outputs are ignored) until the longest row
is done; that wastes a little compute and keeps the KV cache one rectangular tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class GenResult:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    prompt_tokens: int


# on_token(row, token_id): called from the generating thread after each step, for streaming
TokenCallback = Callable[[int, int], None]


@torch.inference_mode()
def generate_batch(model, tokenizer, reqs: list[GenRequest], device: str | torch.device = "cpu",
                   on_token: TokenCallback | None = None) -> list[GenResult]:
    if not reqs:
        return []
    if any(not r.prompt_ids for r in reqs):
        raise ValueError("every prompt needs at least one token")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    B, L = len(reqs), max(len(r.prompt_ids) for r in reqs)
    input_ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, r in enumerate(reqs):
        input_ids[i, L - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[i, L - len(r.prompt_ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    # positions count real tokens only, so a left-padded row sees the same positions as unpadded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator().manual_seed(r.seed) if r.seed is not None else None for r in reqs]

    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1, :]
    last_pos = positions[:, -1:]
    generated: list[list[int]] = [[] for _ in reqs]
    finish: list[str | None] = [None] * B
    for _ in range(max(r.max_new_tokens for r in reqs)):
        nxt = _next_tokens(logits.float(), reqs, gens)
        for i, tok in enumerate(nxt.tolist()):
            if finish[i] is not None:
                continue
            if tok == eos:
                finish[i] = "stop"
                continue
            generated[i].append(tok)
            if on_token is not None:
                on_token(i, tok)
            if len(generated[i]) >= reqs[i].max_new_tokens:
                finish[i] = "length"
        if all(f is not None for f in finish):
            break
        mask = torch.cat([mask, mask.new_ones((B, 1))], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=nxt[:, None].to(device), attention_mask=mask, position_ids=last_pos,
                    past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :]
    results = []
    for r, toks, fin in zip(reqs, generated, finish):
        text = tokenizer.decode(toks, skip_special_tokens=True)
        text, stopped = _apply_stop(text, r.stop)
        results.append(GenResult(toks, text, "stop" if stopped else (fin or "length"), len(r.prompt_ids)))
    return results


def _next_tokens(logits: torch.Tensor, reqs: list[GenRequest], gens: list) -> torch.Tensor:
    """Greedy rows take the argmax; sampling rows draw from their own tempered, top-p-cut distribution
    with their own generator, so a seeded request gives the same text whatever batch it lands in."""
    nxt = logits.argmax(dim=-1).cpu()
    for i, r in enumerate(reqs):
        if r.temperature <= 0:
            continue
        probs = torch.softmax(logits[i].cpu() / r.temperature, dim=-1)
        if r.top_p < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < r.top_p  # always keeps the most likely token
            probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
        nxt[i] = torch.multinomial(probs, 1, generator=gens[i]).item()
    return nxt


def _apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
