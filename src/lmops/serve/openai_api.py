"""OpenAI-compatible completions (``/openai/v1/completions``, ``/openai/v1/models``) on the KServe app.

Why not KServe's own: kserve 0.21 registers these routes only for ``OpenAIGenerativeModel``s, and
its ``kserve.protocol.rest.openai`` package imports its request/response types from vLLM (the
``kserve[llm]`` extra pins vllm==0.24, which pins a CUDA torch build). Without vLLM, KServe logs
"OpenAI endpoints not registered". So this module adds the same paths, under KServe's prefix
(``KSERVE_OPENAI_ROUTE_PREFIX``, default /openai), with the completions request/response shapes
of the OpenAI API, to the same FastAPI app and the same model object (same batcher and limits).
Chat completions are left out: our models have no chat template.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from lmops.serve.generate import GenResult
from lmops.serve.params import BadRequest, GenParams, _describe

PREFIX = os.environ.get("KSERVE_OPENAI_ROUTE_PREFIX", "/openai")


class CompletionRequest(BaseModel):
    """The subset of OpenAI's CreateCompletionRequest we implement; any other field is a 400."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    prompt: StrictStr | list[StrictStr]
    max_tokens: StrictInt | None = 16  # OpenAI's default
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default
    top_p: float = Field(1.0, gt=0, le=1)
    n: Literal[1] = 1
    stream: bool = False
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    echo: Literal[False] = False
    user: str | None = None


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": type_, "param": None, "code": code}})


def register_openai_routes(app: FastAPI, model) -> None:
    """``model``: a lmops.serve.model.LmopsModel (its name is the OpenAI "model" id)."""
    started = int(time.time())

    async def models() -> dict:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": started,
                                            "owned_by": "lmops"}]}

    async def completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(400, f"request body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        try:
            req = CompletionRequest.model_validate(body)
        except ValidationError as e:
            return _error(400, "; ".join(_describe(err) for err in e.errors()))
        if req.model != model.name:
            return _error(404, f"model {req.model!r} does not exist (this server has {model.name!r})",
                          code="model_not_found")
        if not model.ready:
            return _error(503, f"model {model.name!r} is not ready", type_="server_error")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            return _error(400, "prompt must be a non-empty string or list of strings")
        if req.stream and len(prompts) != 1:
            return _error(400, "stream=true takes a single prompt")
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        try:
            gens = [model.gen_request(GenParams(prompt=p, max_new_tokens=req.max_tokens, temperature=req.temperature,
                                                top_p=req.top_p, seed=req.seed, stop=stop), f"prompt[{i}]")
                    for i, p in enumerate(prompts)]
        except ValidationError as e:
            return _error(400, "; ".join(_describe(err) for err in e.errors()))
        except BadRequest as e:
            return _error(400, str(e).replace("max_new_tokens", "max_tokens"))
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model.name}
        if req.stream:
            return StreamingResponse(_sse(model, gens[0], meta), media_type="text/event-stream")
        import asyncio

        results: list[GenResult] = await asyncio.gather(*(model.complete(g) for g in gens))
        prompt_tokens = sum(r.prompt_tokens for r in results)
        completion_tokens = sum(len(r.token_ids) for r in results)
        return {**meta,
                "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                            for i, r in enumerate(results)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    app.add_api_route(f"{PREFIX}/v1/models", models, methods=["GET"])
    app.add_api_route(f"{PREFIX}/v1/completions", completions, methods=["POST"], response_model=None)


async def _sse(model, gen, meta: dict):
    """Server-sent events as OpenAI streams them: one chunk per text piece, then the finish, then [DONE]."""

    def chunk(text: str, finish: str | None) -> str:
        data = {**meta, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(data)}\n\n"

    async for piece in model.stream(gen):
        if isinstance(piece, GenResult):
            yield chunk("", piece.finish_reason)
        else:
            yield chunk(piece, None)
    yield "data: [DONE]\n\n"
