"""The lmops generative model as a KServe ``Model``: load / preprocess / predict / postprocess.

- load: resolve the URI, load the directory (fp32 or a marked variant), run one warm-up generation;
  ``ready`` turns true only after that generation succeeded, so a probe never routes traffic to a
  model that cannot generate.
- preprocess: v1 ``{"instances": [...]}`` or a v2 ``InferRequest`` (BYTES ``prompt`` tensor, settings
  in ``parameters``) -> tokenized, limit-checked requests; client mistakes become 400s.
- predict: every prompt goes through the micro-batcher, so concurrent HTTP requests share forward
  passes.
- postprocess: results back into the protocol the request came in.
The OpenAI completions routes (lmops.serve.openai_api) call ``complete`` / ``stream`` on the same object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from lmops.serve import _kserve  # noqa: F401  (must precede the kserve imports below)
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters

from lmops.config import ServeConfig
from lmops.serve import admission
from lmops.serve.batcher import MicroBatcher
from lmops.serve.generate import GenRequest, GenResult, generate_batch
from lmops.serve.loader import LoadedModel, ModelLoadError, dir_digest, load_model_dir, resolve_model_uri
from lmops.serve.params import BadRequest, GenParams, check_prompt_count, parse_params, to_gen_request
from lmops.serve.scoring import TokenLogprobs

log = logging.getLogger("lmops.serve")

V2_PROMPT = "prompt"
V2_OUTPUT = "text"
V2_COMPLETION_TOKENS = "completion_tokens"


@dataclass
class Prepared:
    """preprocess -> predict -> postprocess: the protocol travels with the requests."""

    protocol: str  # "v1" | "v2"
    requests: list[GenRequest]
    request_id: str | None = None


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class LmopsModel(Model):
    def __init__(self, name: str, model_uri: str, cfg: ServeConfig):
        super().__init__(name)
        self.model_uri = model_uri
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.loaded: LoadedModel | None = None
        self.version = ""  # digest of the loaded directory (lmops.serve.response_cache's ETags name it)
        self.load_error: str | None = None
        self.batcher = MicroBatcher(self._run_batch, cfg.max_batch_size, cfg.max_wait_ms, name)

    # ------------------------------------------------------------ load
    def load(self) -> bool:
        self.ready = False
        t0 = time.perf_counter()
        try:
            path = resolve_model_uri(self.model_uri, self.cfg.cache_dir)
            self.loaded = load_model_dir(path, self.device)
            self.version = dir_digest(path)
            self._warm_up()
        except Exception as e:  # any failure leaves the model not ready, with the reason in the log
            self.load_error = f"{type(e).__name__}: {e}" if not isinstance(e, ModelLoadError) else str(e)
            log.error("model %r from %s failed to load; not ready: %s", self.name, self.model_uri, self.load_error)
            return False
        self.ready = True
        log.info("model %r ready: %s (%s, %s) loaded and warmed up in %.2f s", self.name, self.model_uri,
                 self.loaded.variant, self.device, time.perf_counter() - t0)
        return True

    def _warm_up(self) -> None:
        tok = self.loaded.tokenizer
        ids = tok.encode(self.cfg.warmup_prompt, add_special_tokens=False)
        res = generate_batch(self.loaded.model, tok, [GenRequest(ids, 2)], self.device)
        if not res or not res[0].token_ids and res[0].finish_reason != "stop":
            raise ModelLoadError(f"{self.model_uri}: warm-up generation produced nothing")

    def _run_batch(self, reqs: list[GenRequest], on_token) -> list[GenResult]:
        return generate_batch(self.loaded.model, self.loaded.tokenizer, reqs, self.device, on_token)

    def stop(self) -> None:
        self.batcher.close()
        super().stop()

    # ------------------------------------------------------------ request handling
    @property
    def vocab_size(self) -> int:
        """Token ids a prompt may hold: the rows of the input embedding (what the model can look up)."""
        return int(self.loaded.model.get_input_embeddings().num_embeddings)

    def gen_request(self, params: GenParams, where: str, **extra) -> GenRequest:
        return to_gen_request(params, self.loaded.tokenizer, self.cfg, self.loaded.max_positions, where, **extra)

    # v2 model metadata (GET /v2/models/NAME, gRPC ModelMetadata): what infer takes and returns
    def get_input_types(self) -> list[dict]:
        return [{"name": V2_PROMPT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": V2_OUTPUT, "datatype": "BYTES", "shape": [-1]},
                {"name": V2_COMPLETION_TOKENS, "datatype": "INT64", "shape": [-1]}]

    async def preprocess(self, payload, headers: dict[str, str] | None = None) -> Prepared:
        try:
            if isinstance(payload, InferRequest):
                return Prepared("v2", self._v2_requests(payload), payload.id)
            return Prepared("v1", self._v1_requests(payload))
        except BadRequest as e:
            raise InvalidInput(str(e)) from None

    def _v1_requests(self, body) -> list[GenRequest]:
        if isinstance(body, (bytes, str)):
            # KServe passes bodies with a non-JSON content-type through undecoded (curl -d sends
            # form-urlencoded): accept them when they are JSON anyway
            try:
                body = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise BadRequest(f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object {\"instances\": [{\"prompt\": ...}]} (content-type application/json)")
        unknown = sorted(set(body) - {"instances"})
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))} (allowed: 'instances')")
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise BadRequest("\"instances\" must be a non-empty list of {\"prompt\": ...} objects")
        check_prompt_count(len(instances), self.cfg)
        return [self.gen_request(parse_params(x, f"instances[{i}]"), f"instances[{i}]") for i, x in enumerate(instances)]

    def _v2_requests(self, req: InferRequest) -> list[GenRequest]:
        names = [i.name for i in req.inputs]
        if names != [V2_PROMPT]:
            raise BadRequest(f"expected exactly one input named {V2_PROMPT!r} (BYTES), got {names}")
        inp = req.inputs[0]
        if inp.datatype != "BYTES":
            raise BadRequest(f"input {V2_PROMPT!r} must have datatype BYTES, got {inp.datatype}")
        try:
            prompts = [p.decode("utf-8") if isinstance(p, bytes) else p for p in np.asarray(inp.as_numpy()).reshape(-1)]
        except UnicodeDecodeError:
            raise BadRequest(f"input {V2_PROMPT!r}: prompts must be UTF-8 text") from None
        except (ValueError, TypeError) as e:  # data that does not match its shape / datatype
            raise BadRequest(f"input {V2_PROMPT!r}: {e}") from None
        check_prompt_count(len(prompts), self.cfg)
        # over gRPC the parameters are InferParameter messages: the same plain values as over REST
        settings = to_http_parameters(req.parameters) if req.parameters else {}
        if "prompt" in settings:
            raise BadRequest("parameters: 'prompt' goes in the input tensor, not in parameters")
        out = []
        for i, prompt in enumerate(prompts):
            where = f"inputs[{V2_PROMPT}][{i}]"
            out.append(self.gen_request(parse_params({"prompt": prompt, **settings}, where), where))
        return out

    async def predict(self, payload: Prepared, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> tuple[Prepared, list[GenResult]]:
        results = await asyncio.gather(*(self.complete(r) for r in payload.requests))
        return payload, list(results)

    async def postprocess(self, result, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None):
        prepared, results = result
        if prepared.protocol == "v1":
            return {"predictions": [_as_dict(r) for r in results]}
        texts = np.array([r.text for r in results], dtype=np.object_)
        out = InferOutput(V2_OUTPUT, list(texts.shape), "BYTES")
        out.set_data_from_numpy(texts, binary_data=False)
        tokens = np.array([len(r.token_ids) for r in results], dtype=np.int64)
        count = InferOutput(V2_COMPLETION_TOKENS, list(tokens.shape), "INT64")
        count.set_data_from_numpy(tokens, binary_data=False)
        return InferResponse(prepared.request_id or "", self.name, [out, count])

    # ------------------------------------------------------------ used by the OpenAI routes
    async def complete(self, req: GenRequest) -> GenResult:
        return _charged(await self.batcher.submit(req))

    async def stream(self, req: GenRequest) -> AsyncIterator[tuple[str, TokenLogprobs | None] | GenResult]:
        """Yield (text piece, the log-probs of the tokens it covers) as tokens are generated, then the GenResult.

        Pieces are the growth of the decoded text, so multi-byte characters split across tokens
        arrive whole; text past a stop string is never sent. Log-probs (when the request asks for them)
        travel with the piece that completes their tokens' text.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, TokenLogprobs | None]] = asyncio.Queue()
        task = asyncio.ensure_future(self.batcher.submit(
            req, lambda t, lp: loop.call_soon_threadsafe(queue.put_nowait, (t, lp))))
        tok, ids, sent = self.loaded.tokenizer, [], ""
        pending = TokenLogprobs() if req.logprobs is not None else None
        try:
            while not (task.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                token, lp = getter.result()
                ids.append(token)
                if pending is not None and lp is not None:
                    pending.extend(lp)
                text = tok.decode(ids, skip_special_tokens=True)
                cut = min((text.find(s) for s in req.stop if s and s in text), default=-1)
                text = text[:cut] if cut >= 0 else text
                if len(text) > len(sent) and not text.endswith("\ufffd"):  # wait for a whole character
                    yield text[len(sent):], pending
                    sent = text
                    pending = TokenLogprobs() if pending is not None else None
            result = _charged(task.result())
            if len(result.text) > len(sent) or (pending is not None and pending.token_ids):
                yield result.text[len(sent):], pending
            yield result
        finally:
            if not task.done():
                task.cancel()


def _charged(r: GenResult) -> GenResult:
    admission.charge(r.prompt_tokens + len(r.token_ids))  # the caller's tokens-per-minute budget
    return r


def _as_dict(r: GenResult) -> dict:
    return {"text": r.text, "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
            "completion_tokens": len(r.token_ids)}
