"""Dynamic micro-batching: concurrent requests share one generate_batch call.

A single worker thread owns the model, so batches run one at a time and never contend for cores.
The collector takes the first queued request, then everything else already queued (up to
``max_batch_size``); only when the queue is empty does it wait, at most ``max_wait_ms``, for company.
Under load the queue fills while a batch runs, so batches form without any waiting; an idle server
pays at most max_wait_ms of extra latency.

Isolation: when a batch fails, each of its requests is run again alone, so only a request that fails
by itself fails (with GenerationFailed, whose message tells the client nothing internal); the others
get their answers. Cancellation: a caller that stops waiting (client gone, timeout) sets its request's
``cancelled`` flag, which the generating thread polls every step; the row leaves the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from prometheus_client import Counter, Histogram

from lmops.errors import LmopsError
from lmops.serve import vllm_metrics
from lmops.serve.generate import GenRequest, GenResult, TokenCallback

log = logging.getLogger("lmops.serve")

BATCH_SIZE = Histogram("lmops_batch_size", "Requests per generation micro-batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
BATCH_SECONDS = Histogram("lmops_batch_seconds", "Wall time of one generation micro-batch")
GENERATED_TOKENS = Counter("lmops_generated_tokens", "Tokens generated")
CANCELLED = Counter("lmops_cancelled_requests", "Requests whose caller stopped waiting before they finished")
RETRIED_BATCHES = Counter("lmops_retried_batches", "Batches that failed and were re-run one request at a time")
FAILED = Counter("lmops_failed_requests", "Requests whose generation failed even when run alone")


class _Metrics:
    """vLLM's per-request metrics (lmops.serve.vllm_metrics) for one served model."""

    def __init__(self, model_name: str):
        self.first_token = vllm_metrics.TIME_TO_FIRST_TOKEN.labels(model_name)
        self.per_token = vllm_metrics.TIME_PER_OUTPUT_TOKEN.labels(model_name)
        self.e2e = vllm_metrics.E2E_LATENCY.labels(model_name)
        self.prompt_tokens = vllm_metrics.PROMPT_TOKENS.labels(model_name)
        self.generation_tokens = vllm_metrics.GENERATION_TOKENS.labels(model_name)
        self.running = vllm_metrics.RUNNING.labels(model_name)
        self.waiting = vllm_metrics.WAITING.labels(model_name)
        self._success = {reason: vllm_metrics.SUCCESS.labels(model_name, reason) for reason in ("stop", "length")}

    def finished(self, batch: list, results: list[GenResult]) -> None:
        now = time.perf_counter()
        for job, r in zip(batch, results):
            self.e2e.observe(now - job.enqueued)
            self.prompt_tokens.inc(r.prompt_tokens)
            self.generation_tokens.inc(len(r.token_ids))
            if r.finish_reason in self._success:
                self._success[r.finish_reason].inc()


class GenerationFailed(LmopsError, RuntimeError):
    """Generation of this request failed on its own (the server logged why; the client gets a 500)."""

# run(requests, on_token) -> results, called in the worker thread
RunBatch = Callable[[list[GenRequest], TokenCallback | None], list[GenResult]]


@dataclass
class _Job:
    request: GenRequest
    future: asyncio.Future
    # per-token callback for streaming (token, its log-probs or None; called in the worker thread)
    on_token: Callable[[int, object], None] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    delivered: int = 0  # tokens already passed to on_token (a retry must not send them twice)
    last_token_at: float | None = None  # for vLLM's time-to-first-token and inter-token histograms


class MicroBatcher:
    def __init__(self, run: RunBatch, max_batch_size: int, max_wait_ms: float, model_name: str = "lmops"):
        self._run = run
        self._m = _Metrics(model_name)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmops-generate")
        self.last_batch_size = 0

    async def submit(self, request: GenRequest, on_token: Callable[[int, object], None] | None = None) -> GenResult:
        self._ensure_running()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(request, fut, on_token))
        self._m.waiting.set(self._queue.qsize())
        try:
            return await fut
        except asyncio.CancelledError:
            if not request.cancelled.is_set():
                request.cancelled.set()  # the generating thread drops the row at its next step
                CANCELLED.inc()
            raise

    def _ensure_running(self) -> None:
        # started lazily: the queue and task must belong to the server's event loop, which does not
        # exist yet when the model is constructed and loaded
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="lmops-batcher")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [j for j in batch if not j.future.done()]  # drop requests whose client went away
            self._m.waiting.set(self._queue.qsize())
            if batch:
                self._m.running.set(len(batch))
                try:
                    await self._run_batch(loop, batch)
                finally:
                    self._m.running.set(0)

    async def _generate(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> list[GenResult]:
        rows = [0] * len(batch)  # tokens seen per row in this run (a retry regenerates from the start)

        m = self._m

        def on_token(row: int, tok: int, logprobs) -> None:
            job = batch[row]
            rows[row] += 1
            now = time.perf_counter()
            if job.last_token_at is None:
                m.first_token.observe(now - job.enqueued)
            else:
                m.per_token.observe(now - job.last_token_at)
            job.last_token_at = now
            if job.on_token is not None and rows[row] > job.delivered:
                job.delivered += 1
                job.on_token(tok, logprobs)

        # always passed (not only for streams): the per-token times feed vLLM's latency histograms
        return await loop.run_in_executor(self._executor, self._run, [j.request for j in batch], on_token)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        t0 = time.perf_counter()
        try:
            results = await self._generate(loop, batch)
        except Exception as e:
            if len(batch) == 1:
                self._fail(batch[0], e)
                return
            # which request broke it is unknown: run each alone so only that one fails
            RETRIED_BATCHES.inc()
            log.warning("a batch of %d failed (%s: %s); running its requests one at a time",
                        len(batch), type(e).__name__, e)
            for j in batch:
                if not j.future.done():
                    await self._run_batch(loop, [j])
            return
        seconds = time.perf_counter() - t0
        self.last_batch_size = len(batch)
        BATCH_SIZE.observe(len(batch))
        BATCH_SECONDS.observe(seconds)
        GENERATED_TOKENS.inc(sum(len(r.token_ids) for r in results))
        self._m.finished(batch, results)
        log.debug("batch of %d in %.1f ms", len(batch), seconds * 1000)
        for j, r in zip(batch, results):
            if not j.future.done():
                j.future.set_result(r)

    @staticmethod
    def _fail(job: _Job, e: Exception) -> None:
        FAILED.inc()
        log.error("generation failed for one request (%d prompt tokens): %s: %s",
                  len(job.request.prompt_ids), type(e).__name__, e)
        if not job.future.done():
            job.future.set_exception(GenerationFailed("generation failed for this request"))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
