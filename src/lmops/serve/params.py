"""What a generation request may ask for, checked completely before it reaches a batch.

Every protocol (v1 instances, v2 tensors + parameters over REST or gRPC, OpenAI completions and chat)
is reduced to ``GenParams`` and then to a tokenized ``GenRequest`` here; the limits come from
``ServeConfig`` alone, so the protocols cannot disagree about what is allowed. Nothing that passes
these checks can fail inside generation: floats are finite (JSON's NaN/Infinity are refused), integers
fit what torch takes (seeds are int64), sizes are bounded in bytes before any tokenizer runs.
"""

from __future__ import annotations

import random
from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError

from lmops.config import ServeConfig
from lmops.errors import LmopsError
from lmops.serve.generate import GenRequest

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# strict: "0.5" or true is not a number; finite: NaN and +-inf never reach the sampler
Finite = Annotated[float, Strict(), AllowInfNan(False)]
Seed = Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX)]
Count = Annotated[int, Strict()]


class BadRequest(LmopsError, ValueError):
    """A request the client must fix (the server answers 400 with this message)."""

    status = 400


class TooLarge(BadRequest):
    status = 413


class GenParams(BaseModel):
    """One generation: a prompt and how to continue it. Unknown fields are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    max_new_tokens: Count | None = None
    temperature: Finite = Field(0.0, ge=0, le=2)
    top_p: Finite = Field(1.0, gt=0, le=1)
    seed: Seed | None = None
    stop: list[str] = Field(default_factory=list)


def parse_params(raw: Any, where: str) -> GenParams:
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: expected an object with a \"prompt\", got {type(raw).__name__}")
    if isinstance(raw.get("prompt"), str):  # before pydantic, whose message for a lone surrogate says less
        check_unicode(raw["prompt"], f"{where}: prompt")
    try:
        return GenParams.model_validate(raw)
    except ValidationError as e:
        raise BadRequest(f"{where}: {describe(e, GenParams)}") from None


def describe(e: ValidationError, model: type[BaseModel] = GenParams) -> str:
    """A pydantic error as one line a client can act on (no input echo, no internals)."""
    return "; ".join(_describe(err, model) for err in e.errors(include_url=False, include_input=False))


def _describe(err: dict, model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "request"
    if err["type"] == "extra_forbidden":
        return f"unknown field {loc!r} (allowed: {', '.join(model.model_fields)})"
    if err["type"] == "missing":
        return f"{loc} is required"
    if loc == "prompt" and err["type"] in ("string_too_short", "string_type"):
        return "prompt must be a non-empty string"
    return f"{loc}: {err['msg']}"


def check_prompt_count(n: int, cfg: ServeConfig) -> None:
    if n > cfg.max_prompts_per_request:
        raise BadRequest(f"{n} generations in one request; the limit is {cfg.max_prompts_per_request}")


def check_stop(stop: list[str], cfg: ServeConfig, where: str) -> None:
    if len(stop) > cfg.max_stop_strings:
        raise BadRequest(f"{where}: {len(stop)} stop strings; the limit is {cfg.max_stop_strings}")
    if any(len(s.encode("utf-8", "surrogatepass")) > cfg.max_stop_bytes for s in stop):
        raise BadRequest(f"{where}: a stop string is longer than {cfg.max_stop_bytes} bytes")


def check_unicode(text: str, what: str) -> None:
    """A lone surrogate ("a\\ud800b") is valid JSON but not text: the tokenizer would raise TypeError (a 500)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"{what} is not valid Unicode text (a lone surrogate at character {e.start})") from None


def check_prompt_bytes(prompt: str, cfg: ServeConfig, where: str) -> None:
    # before tokenizing: a megabyte prompt must cost a length check, not a second of tokenizer time
    if len(prompt) > cfg.max_prompt_bytes or len(prompt.encode("utf-8", "surrogatepass")) > cfg.max_prompt_bytes:
        raise TooLarge(f"{where}: prompt is longer than {cfg.max_prompt_bytes} bytes")


def to_gen_request(p: GenParams, tokenizer, cfg: ServeConfig, max_positions: int, where: str, *,
                   min_new_tokens: int = 1, prompt_ids: list[int] | None = None, **extra) -> GenRequest:
    """Apply the server's limits, tokenize, and build the batch request. ``prompt_ids``: a prompt given as
    token ids (OpenAI completions; checked against the vocabulary by the caller) instead of ``p.prompt``.
    ``extra``: GenRequest fields the OpenAI routes add (logprobs, prompt_logprobs, penalties), already
    type- and range-checked."""
    new = cfg.default_max_new_tokens if p.max_new_tokens is None else p.max_new_tokens
    if not min_new_tokens <= new <= cfg.max_new_tokens:
        raise BadRequest(f"{where}: max_new_tokens must be between {min_new_tokens} and {cfg.max_new_tokens}, got {new}")
    check_stop(p.stop, cfg, where)
    if prompt_ids is None:
        check_prompt_bytes(p.prompt, cfg, where)
        check_unicode(p.prompt, f"{where}: prompt")
        ids = tokenizer.encode(p.prompt, add_special_tokens=False)
    else:
        ids = prompt_ids
    if not ids:
        raise BadRequest(f"{where}: prompt encodes to no tokens")
    if len(ids) > cfg.max_prompt_tokens:
        raise BadRequest(f"{where}: prompt is {len(ids)} tokens, the limit is {cfg.max_prompt_tokens}")
    if len(ids) + new > max_positions:
        raise BadRequest(f"{where}: prompt ({len(ids)} tokens) + max_new_tokens ({new}) exceeds the model's "
                         f"{max_positions} positions")
    seed = p.seed
    if seed is None and p.temperature > 0:
        seed = random.getrandbits(63)  # see GenRequest.seed: a retried request must repeat itself
    return GenRequest(ids, new, p.temperature, p.top_p, seed, [s for s in p.stop if s], **extra)
