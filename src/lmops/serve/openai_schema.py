"""The OpenAI request bodies we accept: completions and chat completions, validated completely.

Fields follow OpenAI's API reference; a field we do not implement is a 400 naming it (never silently
ignored), and fields clients send with a neutral value (``logit_bias: {}``, ``best_of: 1``,
penalties of 0) are accepted. Limits that depend on the server (max_tokens, logprobs, n, stop) are
checked against ServeConfig in lmops.serve.openai_api, through lmops.serve.params.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from lmops.serve.params import Count, Finite, Seed

Penalty = Annotated[Finite, Field(ge=-2, le=2)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: StrictStr
    max_tokens: Count | None = None
    temperature: Finite = Field(1.0, ge=0, le=2)  # OpenAI's default
    top_p: Finite = Field(1.0, gt=0, le=1)
    n: Count = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: Seed | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[StrictStr, Finite] | None = None
    user: StrictStr | None = None

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        if v:
            raise ValueError("logit_bias is not supported (only an empty object)")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    max_tokens: Count | None = 16  # OpenAI's default; 0 with echo + logprobs = score the prompt
    # text, texts, token ids, or lists of token ids (lm-evaluation-harness sends ids by default)
    prompt: StrictStr | list[StrictStr] | list[Count] | list[list[Count]]
    echo: StrictBool = False
    logprobs: Count | None = Field(None, ge=0)
    best_of: Count | None = Field(None, ge=1, le=1)
    suffix: None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Count | None = None  # newer name for max_tokens; either may be given
    logprobs: StrictBool = False
    top_logprobs: Count | None = Field(None, ge=0)

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
