"""Token log-probabilities and usage in the shapes OpenAI's responses use.

Completions (legacy): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``, tokens as text,
the alternatives as ``{token_text: logprob}`` (the chosen token and the top k, as vLLM does).
Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`` with exactly the top k.
A token's text is its own decoding, so a character split across tokens shows as U+FFFD pieces.
"""

from __future__ import annotations

from lmops.serve.generate import GenResult
from lmops.serve.scoring import TokenLogprobs


def usage(results: list[GenResult], n: int) -> dict:
    # a prompt is counted once however many choices (n) were generated from it, as OpenAI does
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(len(r.token_ids) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_logprobs(tokenizer, lp: TokenLogprobs, start: int) -> dict:
    texts = [tokenizer.decode([t]) for t in lp.token_ids]
    offsets, at = [], start
    for t in texts:
        offsets.append(at)
        at += len(t)
    top = [None if alt is None else {tokenizer.decode([t]): v for t, v in alt.items()} for alt in lp.top]
    return {"tokens": texts, "token_logprobs": list(lp.logprobs), "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(tokenizer, lp: TokenLogprobs | None, k: int) -> dict:
    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = []
    for token, logprob, alt in zip(lp.token_ids, lp.logprobs, lp.top) if lp else ():
        best = sorted(alt.items(), key=lambda kv: -kv[1])[:k]
        content.append({**entry(token, logprob), "top_logprobs": [entry(t, v) for t, v in best]})
    return {"content": content}
