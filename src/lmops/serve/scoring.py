"""Log-probabilities of tokens under the model: the generated ones, and the prompt's (prompt scoring).

Prompt scoring is how evaluation harnesses compute log-likelihoods through an API (OpenAI
completions with ``echo: true, logprobs: k, max_tokens: 0``): position t of the prompt is scored by
the logits after tokens 0..t-1, so the first prompt token has no log-prob (None), as in vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenLogprobs:
    """Per position: the token, its log-prob (None: unscored) and the top-k alternatives {id: log-prob}."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top: list[dict[int, float] | None] = field(default_factory=list)

    def extend(self, other: "TokenLogprobs") -> None:
        self.token_ids += other.token_ids
        self.logprobs += other.logprobs
        self.top += other.top

    def __add__(self, other: "TokenLogprobs") -> "TokenLogprobs":
        out = TokenLogprobs(list(self.token_ids), list(self.logprobs), list(self.top))
        out.extend(other)
        return out


def _top(logp: torch.Tensor, k: int) -> dict[int, float]:
    if k <= 0:
        return {}
    values, ids = logp.topk(min(k, logp.shape[-1]))
    return dict(zip(ids.tolist(), values.tolist()))


def step_logprobs(logits: torch.Tensor, token: int, k: int) -> TokenLogprobs:
    """One generated token: ``logits`` is the row that chose it (vocab,)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return TokenLogprobs([token], [float(logp[token])], [{token: float(logp[token]), **_top(logp, k)}])


def prompt_logprobs(logits: torch.Tensor, prompt_ids: list[int], k: int) -> TokenLogprobs:
    """``logits``: (len(prompt_ids), vocab), the prompt's own positions (padding already cut off)."""
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)  # position t predicts token t + 1
    ids = torch.tensor(prompt_ids[1:], device=logp.device)
    chosen = logp.gather(1, ids[:, None])[:, 0].tolist() if len(prompt_ids) > 1 else []
    top = [{t: lp, **_top(logp[j], k)} for j, (t, lp) in enumerate(zip(prompt_ids[1:], chosen))]
    return TokenLogprobs(list(prompt_ids), [None, *chosen], [None, *top])
