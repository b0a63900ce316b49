"""OpenAI-compatible routes on the KServe app: completions, chat completions, models list and retrieve.

Why not KServe's own: kserve 0.21 registers its OpenAI routes only for ``OpenAIGenerativeModel``s, and
its ``kserve.protocol.rest.openai`` package imports its request/response types from vLLM (the
``kserve[llm]`` extra pins vllm==0.24, which pins a CUDA torch build). So this module adds the same
paths to the same FastAPI app and the same model object (same batcher and limits), under KServe's
prefix (``KSERVE_OPENAI_ROUTE_PREFIX``, default /openai) and without it, so that both
``base_url=http://host/openai/v1`` and ``base_url=http://host/v1`` work.

``/v1/models`` and ``/v1/models/NAME`` are also KServe v1's model list and readiness routes; the
answers here carry both protocols' fields (``models``/``name``/``ready`` and ``object``/``data``/``id``)
and keep v1's status codes (503 while not ready), so probes and both kinds of client read them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from lmops.serve.chat import chat_prompt
from lmops.serve.errors import error_body, status_and_message
from lmops.serve.generate import GenRequest, GenResult
from lmops.serve.openai_format import chat_logprobs, completion_logprobs, usage
from lmops.serve.openai_schema import ChatRequest, CompletionRequest
from lmops.serve.params import BadRequest, GenParams, check_prompt_count, describe

PREFIX = os.environ.get("KSERVE_OPENAI_ROUTE_PREFIX", "/openai")


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(True, status, message, code))


def _reject(message: str) -> JSONResponse:
    return _error(400, message)


def _parse(raw: bytes, schema: type[BaseModel]):
    def no_constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=no_constant)  # NaN / Infinity are not JSON
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return schema.model_validate(body)
    except ValidationError as e:
        raise BadRequest(describe(e, schema).replace("max_new_tokens", "max_tokens")) from None


def register_openai_routes(app: FastAPI, model) -> None:
    """``model``: a lmops.serve.model.LmopsModel (its name is the OpenAI "model" id)."""
    started = int(time.time())
    cfg = model.cfg

    def card() -> dict:
        return {"id": model.name, "object": "model", "created": started, "owned_by": "lmops"}

    async def models() -> dict:
        return {"object": "list", "data": [card()], "models": [model.name]}  # OpenAI + KServe v1

    async def retrieve(model_id: str):
        if model_id != model.name:
            return _error(404, f"model {model_id!r} does not exist (this server has {model.name!r})", "model_not_found")
        if not model.ready:
            return _error(503, f"model {model.name!r} is not ready")
        return {**card(), "name": model.name, "ready": True}  # OpenAI + KServe v1 readiness

    def check_model(req) -> JSONResponse | None:
        if req.model != model.name:
            return _error(404, f"model {req.model!r} does not exist (this server has {model.name!r})", "model_not_found")
        if not model.ready:
            return _error(503, f"model {model.name!r} is not ready")
        return None

    def gen_requests(prompts: list[str | list[int]], req, max_tokens: int | None, k: int | None,
                     score_prompt: bool, min_new: int) -> list[GenRequest]:
        """prompts x n generations, each checked against the server's limits before any is queued."""
        check_prompt_count(len(prompts) * req.n, cfg)
        if k is not None and k > cfg.max_logprobs:
            raise BadRequest(f"logprobs: at most {cfg.max_logprobs} alternatives, got {k}")
        vocab = model.vocab_size
        out = []
        for i, prompt in enumerate(prompts):
            ids = None
            if isinstance(prompt, list):
                bad = next((t for t in prompt if not 0 <= t < vocab), None)
                if bad is not None:
                    raise BadRequest(f"prompt[{i}]: token id {bad} is outside the vocabulary (0..{vocab - 1})")
                ids = prompt
            if not prompt:
                raise BadRequest(f"prompt[{i}]: prompt must be a non-empty string or list of token ids")
            for j in range(req.n):
                # with a seed, the n choices still differ: choice j samples with seed + j
                seed = None if req.seed is None else (req.seed + j) % (1 << 63)
                params = GenParams.model_construct(prompt=prompt if ids is None else "", max_new_tokens=max_tokens,
                                                   temperature=req.temperature, top_p=req.top_p, seed=seed,
                                                   stop=req.stops())
                out.append(model.gen_request(params, f"prompt[{i}]", min_new_tokens=min_new, logprobs=k,
                                             prompt_logprobs=score_prompt, prompt_ids=ids,
                                             presence_penalty=req.presence_penalty,
                                             frequency_penalty=req.frequency_penalty))
        return out

    async def completions(request: Request):
        try:
            req = _parse(await request.body(), CompletionRequest)
            if (bad := check_model(req)) is not None:
                return bad
            prompts = prompt_list(req.prompt)
            if not prompts:
                raise BadRequest("prompt must be a non-empty string, list of strings or list of token ids")
            if req.stream and req.echo and req.logprobs is not None:
                raise BadRequest("echo with logprobs and stream=true is not supported (drop one of them)")
            # max_tokens 0 only scores (or echoes) the prompt: no generation step runs
            gens = gen_requests(prompts, req, req.max_tokens, req.logprobs,
                                score_prompt=req.echo and req.logprobs is not None, min_new=0)
        except BadRequest as e:
            return _error(e.status, str(e).replace("max_new_tokens", "max_tokens"))
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model.name}
        tok = model.loaded.tokenizer
        texts = [p if isinstance(p, str) else tok.decode(p) for p in prompts]  # what echo shows
        if req.stream:
            prompt_of = [texts[i // req.n] for i in range(len(gens))]
            return _stream(model, gens, meta, _completion_piece(tok, prompt_of, req.echo), req.n,
                           req.stream_options is not None and req.stream_options.include_usage)
        results: list[GenResult] = await asyncio.gather(*(model.complete(g) for g in gens))
        choices = []
        for i, r in enumerate(results):
            prompt = texts[i // req.n]
            text = prompt + r.text if req.echo else r.text
            lp = None
            if req.logprobs is not None:
                scored = (r.prompt_logprobs + r.logprobs) if req.echo else r.logprobs
                lp = completion_logprobs(tok, scored, 0 if req.echo else len(prompt))
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": r.finish_reason})
        return {**meta, "choices": choices, "usage": usage(results, req.n)}

    async def chat(request: Request):
        try:
            req = _parse(await request.body(), ChatRequest)
            if (bad := check_model(req)) is not None:
                return bad
            if req.top_logprobs is not None and not req.logprobs:
                raise BadRequest("top_logprobs needs logprobs: true")
            prompt = chat_prompt(model.loaded.tokenizer, req.messages, cfg)
            k = (req.top_logprobs or 0) if req.logprobs else None
            gens = gen_requests([prompt], req, req.token_budget(), k, score_prompt=False, min_new=1)
        except BadRequest as e:
            return _error(e.status, str(e).replace("max_new_tokens", "max_tokens"))
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model.name}
        if req.stream:
            return _stream(model, gens, {**meta, "object": "chat.completion.chunk"},
                           _chat_piece(model.loaded.tokenizer, k if req.logprobs else None), req.n,
                           req.stream_options is not None and req.stream_options.include_usage)
        results: list[GenResult] = await asyncio.gather(*(model.complete(g) for g in gens))
        tok = model.loaded.tokenizer
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                    "logprobs": chat_logprobs(tok, r.logprobs, k) if req.logprobs else None,
                    "finish_reason": r.finish_reason} for i, r in enumerate(results)]
        return {**meta, "choices": choices, "usage": usage(results, 1)}

    for prefix in (f"{PREFIX}/v1", "/v1"):
        app.add_api_route(f"{prefix}/models", models, methods=["GET"])
        app.add_api_route(f"{prefix}/models/{{model_id}}", retrieve, methods=["GET"], response_model=None)
        app.add_api_route(f"{prefix}/completions", completions, methods=["POST"], response_model=None)
        app.add_api_route(f"{prefix}/chat/completions", chat, methods=["POST"], response_model=None)


def prompt_list(prompt) -> list[str | list[int]]:
    """OpenAI's four prompt shapes as a list of prompts, each text or token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [list(prompt)]  # one prompt of token ids
    return list(prompt)


def _completion_piece(tokenizer, prompts: list[str], echo: bool):
    # text_offset of each choice's next token, counted from the prompt's start as OpenAI does
    offsets = list(map(len, prompts))
    echoes = prompts if echo else [""] * len(prompts)

    def piece(index: int, text: str | None, lp, finish: str | None, first: bool) -> dict:
        logprobs = None
        if lp is not None:
            logprobs = completion_logprobs(tokenizer, lp, offsets[index])
            offsets[index] += sum(len(t) for t in logprobs["tokens"])
        return {"index": index, "text": (echoes[index] if first else "") + (text or ""), "finish_reason": finish,
                "logprobs": logprobs}
    return piece


def _chat_piece(tokenizer, k: int | None):
    def piece(index: int, text: str | None, lp, finish: str | None, first: bool) -> dict:
        delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
        logprobs = chat_logprobs(tokenizer, lp, k) if k is not None and lp is not None else None
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
    return piece


def _stream(model, gens: list[GenRequest], meta: dict, piece, n: int, include_usage: bool) -> StreamingResponse:
    return StreamingResponse(_sse(model, gens, meta, piece, n, include_usage), media_type="text/event-stream")


async def _sse(model, gens: list[GenRequest], meta: dict, piece, n: int, include_usage: bool):
    """Server-sent events as OpenAI streams them: chunks of every choice (``index``) as their tokens come,
    each choice's finish, [usage], [DONE]. All choices generate at once (the batcher batches them).

    An error after the stream started cannot change the 200: it is sent as an error event (which the
    openai client raises as an APIError) and the stream ends there, without [DONE].
    """
    extra = {"usage": None} if include_usage else {}
    queue: asyncio.Queue = asyncio.Queue()

    def event(data: dict) -> str:
        return f"data: {json.dumps(data)}\n\n"

    async def run(index: int, gen: GenRequest) -> None:
        try:
            async for item in model.stream(gen):
                await queue.put((index, item))
        except Exception as e:  # handed to the response, which ends with an error event
            await queue.put((index, e))
        await queue.put((index, None))

    tasks = [asyncio.ensure_future(run(i, g)) for i, g in enumerate(gens)]
    first, results, running = [True] * len(gens), [None] * len(gens), len(gens)
    try:
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, Exception):
                status, message = status_and_message(item)
                yield event(error_body(True, status, message))
                return
            if isinstance(item, GenResult):
                results[index] = item
                yield event({**meta, "choices": [piece(index, None, None, item.finish_reason, first[index])], **extra})
            else:
                text, lp = item
                yield event({**meta, "choices": [piece(index, text, lp, None, first[index])], **extra})
            first[index] = False
        if include_usage:
            yield event({**meta, "choices": [], "usage": usage(results, n)})
    finally:
        for t in tasks:
            t.cancel()
    yield "data: [DONE]\n\n"
