"""Batched autoregressive generation with per-request settings, independent of any server.

One forward pass serves a whole micro-batch: prompts are left-padded so every row's next token sits
in the last column, and each row keeps its own temperature, top-p, penalties, seed, token budget and
stop state. A row that finishes (EOS, budget, stop string) or whose client went away (``cancelled``)
is dropped from the batch and its KV cache at the next step, so it costs nothing after that and a
batch ends as soon as its last live row does.

Log-probabilities are those of the model's own distribution (log-softmax of the raw logits, before
temperature, top-p or penalties), as vLLM reports them; ``prompt_logprobs`` scores the prompt tokens
from the same first forward pass that starts generation (lmops.serve.scoring).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from lmops.serve.scoring import TokenLogprobs, prompt_logprobs, step_logprobs


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: int  # 0 = score the prompt only (with prompt_logprobs)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    # every sampling request has a seed (the server draws one when the client names none), so a
    # request retried alone after its batch failed produces the same tokens it already streamed
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no log-probs; k: the chosen token's and the top k alternatives
    prompt_logprobs: bool = False  # also score the prompt tokens (OpenAI echo + logprobs)
    # set by the server when the client disconnects or times out; the generating thread polls it
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass
class GenResult:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" | "cancelled"
    prompt_tokens: int
    logprobs: TokenLogprobs | None = None  # of the generated tokens, when asked
    prompt_logprobs: TokenLogprobs | None = None  # of the prompt tokens (the first is None), when asked


# on_token(row, token_id, its log-probs or None): called from the generating thread after each step, for streaming
TokenCallback = Callable[[int, int, "TokenLogprobs | None"], None]


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

    # the LM head over every prompt position only when a prompt is scored; otherwise the last one is enough
    # (for an 8k vocabulary that is most of a long prompt's prefill)
    keep = 0 if any(r.prompt_logprobs for r in reqs) else 1
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=keep)
    scored = [prompt_logprobs(out.logits[i, L - len(r.prompt_ids):], r.prompt_ids, r.logprobs or 0)
              if r.prompt_logprobs else None for i, r in enumerate(reqs)]
    past, logits = out.past_key_values, out.logits[:, -1, :]
    last_pos = positions[:, -1:]
    generated: list[list[int]] = [[] for _ in reqs]
    chosen: list[TokenLogprobs | None] = [TokenLogprobs() if r.logprobs is not None else None for r in reqs]
    finish: list[str | None] = ["length" if r.max_new_tokens == 0 else None for r in reqs]
    counts = _penalty_counts(reqs, logits)
    active = [i for i in range(B) if finish[i] is None]  # batch row -> request index
    if active and len(active) < B:
        past, logits, mask, last_pos = _keep(active, list(range(B)), past, logits, mask, last_pos)
    while active:
        nxt = _next_tokens(logits.float(), [reqs[i] for i in active], [gens[i] for i in active],
                           [counts[i] for i in active])
        for row, (i, tok) in enumerate(zip(active, nxt.tolist())):
            r = reqs[i]
            if r.cancelled.is_set():
                finish[i] = "cancelled"
                continue
            if tok == eos:
                finish[i] = "stop"
                continue
            generated[i].append(tok)
            step = step_logprobs(logits[row], tok, r.logprobs) if chosen[i] is not None else None
            if step is not None:
                chosen[i].extend(step)
            if counts[i] is not None:
                counts[i][tok] += 1
            if on_token is not None:
                on_token(i, tok, step)
            if len(generated[i]) >= r.max_new_tokens:
                finish[i] = "length"
            elif r.stop and _apply_stop(tokenizer.decode(generated[i], skip_special_tokens=True), r.stop)[1]:
                finish[i] = "stop"
        still = [i for i in active if finish[i] is None]
        if not still:
            break
        if len(still) < len(active):
            past, logits, mask, last_pos = _keep(still, active, past, logits, mask, last_pos)
            nxt = nxt[[active.index(i) for i in still]]
        active = still
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=nxt[:, None].to(device), attention_mask=mask, position_ids=last_pos,
                    past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :]
    results = []
    for i, (r, toks) in enumerate(zip(reqs, generated)):
        text = tokenizer.decode(toks, skip_special_tokens=True)
        text, stopped = _apply_stop(text, r.stop)
        reason = "stop" if stopped else (finish[i] or "length")
        results.append(GenResult(toks, text, reason, len(r.prompt_ids), chosen[i], scored[i]))
    return results


def _keep(keep: list[int], rows: list[int], past, logits, mask, last_pos):
    """Drop finished rows: ``rows`` maps the current batch rows to requests, ``keep`` the ones to keep."""
    idx = torch.tensor([rows.index(i) for i in keep], device=mask.device)
    if hasattr(past, "batch_select_indices"):
        past.batch_select_indices(idx)
    else:  # a cache type without row selection: keep riding along is not possible, so fail loudly
        raise TypeError(f"{type(past).__name__} cannot drop finished rows")
    return past, logits[idx], mask[idx], last_pos[idx]


def _penalty_counts(reqs: list[GenRequest], logits: torch.Tensor) -> list[torch.Tensor | None]:
    # per-row counts of generated tokens, only for rows that penalize repetition
    return [torch.zeros(logits.shape[-1], dtype=torch.float32)
            if (r.presence_penalty or r.frequency_penalty) else None for r in reqs]


def _next_tokens(logits: torch.Tensor, reqs: list[GenRequest], gens: list, counts: list) -> torch.Tensor:
    """Greedy rows take the argmax; sampling rows draw from their own tempered, top-p-cut distribution
    with their own generator, so a seeded request gives the same text whatever batch it lands in.
    Presence/frequency penalties subtract from the logits of tokens already generated (OpenAI's rule)."""
    logits = logits.cpu()
    if any(c is not None for c in counts):
        logits = logits.clone()  # the caller still reads the unpenalized logits for log-probs
    for i, r in enumerate(reqs):
        if counts[i] is not None:
            logits[i] -= r.presence_penalty * (counts[i] > 0) + r.frequency_penalty * counts[i]
    nxt = logits.argmax(dim=-1)
    for i, r in enumerate(reqs):
        if r.temperature <= 0:
            continue
        # shifted so the largest is 0 and in float64: any temperature > 0, however small, gives a
        # finite distribution (a tiny one divided unshifted overflowed to inf - inf = NaN)
        scaled = (logits[i].double() - logits[i].max()) / r.temperature
        probs = torch.softmax(scaled, dim=-1)
        if r.top_p < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < r.top_p  # always keeps the most likely token
            probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
        nxt[i] = torch.multinomial(probs, 1, generator=gens[i]).item()
    return nxt


def _apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
