"""What a generation request may ask for, checked before it reaches the model.

Every protocol (v1 instances, v2 tensors + parameters, OpenAI completions) is reduced to
``GenParams`` and then to a tokenized ``GenRequest``; the limits (``ServeConfig``) are applied here
once, so the three protocols cannot disagree about what is allowed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from lmops.config import ServeConfig
from lmops.errors import LmopsError
from lmops.serve.generate import GenRequest


class BadRequest(LmopsError, ValueError):
    """A request the client must fix (the server answers 400 with this message)."""


class GenParams(BaseModel):
    """One generation: a prompt and how to continue it. Unknown fields are errors, not ignored."""

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(min_length=1)
    max_new_tokens: StrictInt | None = None
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: StrictInt | None = None
    stop: list[StrictStr] = Field(default_factory=list, max_length=4)


def parse_params(raw: Any, where: str) -> GenParams:
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: expected an object with a \"prompt\", got {type(raw).__name__}")
    try:
        return GenParams.model_validate(raw)
    except ValidationError as e:
        raise BadRequest(f"{where}: " + "; ".join(_describe(err) for err in e.errors())) from None


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "request"
    if err["type"] == "extra_forbidden":
        return f"unknown field {loc!r} (allowed: {', '.join(GenParams.model_fields)})"
    if err["type"] == "missing":
        return f"{loc} is required"
    if loc == "prompt" and err["type"] in ("string_too_short", "string_type"):
        return "prompt must be a non-empty string"
    return f"{loc}: {err['msg']}"


def to_gen_request(p: GenParams, tokenizer, cfg: ServeConfig, max_positions: int, where: str) -> GenRequest:
    """Tokenize and apply the server's limits."""
    new = cfg.default_max_new_tokens if p.max_new_tokens is None else p.max_new_tokens
    if not 1 <= new <= cfg.max_new_tokens:
        raise BadRequest(f"{where}: max_new_tokens must be between 1 and {cfg.max_new_tokens}, got {new}")
    ids = tokenizer.encode(p.prompt, add_special_tokens=False)
    if not ids:
        raise BadRequest(f"{where}: prompt encodes to no tokens")
    if len(ids) > cfg.max_prompt_tokens:
        raise BadRequest(f"{where}: prompt is {len(ids)} tokens, the limit is {cfg.max_prompt_tokens}")
    if len(ids) + new > max_positions:
        raise BadRequest(f"{where}: prompt ({len(ids)} tokens) + max_new_tokens ({new}) exceeds the model's "
                         f"{max_positions} positions")
    return GenRequest(ids, new, p.temperature, p.top_p, p.seed, list(p.stop))
