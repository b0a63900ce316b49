"""The quality probe: bits per byte of probe texts under a served model, through its completions API.

Each text is scored as evaluation harnesses score through an API: ``/v1/completions`` with
``echo: true, logprobs: 1, max_tokens: 0``; ``choices[0].logprobs.token_logprobs`` covers the prompt
tokens and the first is null (nothing predicts it). Bits per byte = the scored tokens' negative
log-likelihood in bits / the UTF-8 bytes those tokens cover (the text minus its first token), as
lmops.evaluate defines it, so the canary and the stable are comparable even with different
tokenizers.
"""

from __future__ import annotations

import math

from lmops.errors import LmopsError

ROUTES = ("/openai/v1/completions", "/v1/completions")


class ProbeError(LmopsError, RuntimeError):
    """The probe could not score a text: the message names the server and what it answered."""


def probe_texts(texts: list[str] | None = None, config_map: dict[str, str] | None = None, key: str = "probe.txt",
                uri: str | None = None) -> list[str]:
    """The probe set from the spec's one source; a ConfigMap or file holds texts separated by blank-line
    runs of ``\\n---\\n`` or, without them, one text per non-empty line."""
    if texts:
        return list(texts)
    if config_map is not None:
        if key not in config_map:
            raise ProbeError(f"probe ConfigMap has no key {key!r} (keys: {sorted(config_map)})")
        return split_texts(config_map[key])
    if uri:
        from lmops import storage

        return split_texts(storage.read_bytes(uri).decode("utf-8"))
    raise ProbeError("no probe texts given")


def split_texts(raw: str) -> list[str]:
    parts = [p.strip("\n") for p in raw.split("\n---\n")] if "\n---\n" in raw else raw.splitlines()
    return [p for p in parts if p.strip()]


def score(base_url: str, model: str, text: str, timeout: float = 30.0, session=None,
          api_key: str | None = None) -> tuple[float, int]:
    """(negative log-likelihood in bits of the scored tokens, the UTF-8 bytes they cover)."""
    import requests

    http = session or requests
    body = {"model": model, "prompt": text, "echo": True, "logprobs": 1, "max_tokens": 0, "temperature": 0}
    last = None
    for route in ROUTES:  # KServe's prefix first, the bare OpenAI path as vLLM serves it second
        try:
            r = http.post(base_url.rstrip("/") + route, json=body, timeout=timeout,
                          headers={"Authorization": f"Bearer {api_key}"} if api_key else None)
        except requests.RequestException as e:
            raise ProbeError(f"{base_url}: cannot reach the completions endpoint: {e}") from None
        if r.status_code == 404 and "model" not in r.text.lower():
            last = r
            continue
        if not r.ok:
            raise ProbeError(f"{base_url}{route}: {r.status_code} {r.text[:300]}")
        return _nll_bits(base_url, text, r.json())
    raise ProbeError(f"{base_url}: no completions endpoint ({', '.join(ROUTES)}): {last.status_code if last else ''}")


def _nll_bits(base_url: str, text: str, answer: dict) -> tuple[float, int]:
    try:
        lp = answer["choices"][0]["logprobs"]
        tokens, logprobs = lp["tokens"], lp["token_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ProbeError(f"{base_url}: the answer has no choices[0].logprobs.token_logprobs (is echo with"
                         f" max_tokens 0 supported?): {str(answer)[:300]}") from None
    if len(tokens) != len(logprobs) or not tokens:
        raise ProbeError(f"{base_url}: {len(tokens)} tokens but {len(logprobs)} log-probs for a probe text")
    scored = [x for x in logprobs[1:] if x is not None]
    if len(scored) != len(logprobs) - 1 or any(not math.isfinite(x) for x in scored):
        raise ProbeError(f"{base_url}: missing or non-finite log-probs for a probe text")
    n_bytes = len(text.encode("utf-8")) - len(tokens[0].encode("utf-8"))
    return -sum(scored) / math.log(2), max(n_bytes, 0)


def bits_per_byte(base_url: str, model: str, texts: list[str], timeout: float = 30.0,
                  api_key: str | None = None) -> float:
    """Bits per byte over the whole probe set (bytes-weighted, like one long document); ``api_key`` is sent as
    ``Authorization: Bearer`` to servers that need one (lmops.serve.auth)."""
    import requests

    if not texts:
        raise ProbeError("no probe texts")
    bits = n_bytes = 0
    with requests.Session() as session:
        for text in texts:
            b, n = score(base_url, model, text, timeout, session, api_key)
            bits += b
            n_bytes += n
    if n_bytes == 0:
        raise ProbeError("the probe texts are one token each: nothing to score")
    return bits / n_bytes
