"""Dynamic micro-batching: concurrent requests share one generate_batch call.

A single worker thread owns the model, so batches run one at a time and never contend for cores.
The collector takes the first queued request, then everything else already queued (up to
``max_batch_size``); only when the queue is empty does it wait, at most ``max_wait_ms``, for company.
Under load the queue fills while a batch runs, so batches form without any waiting; an idle server
pays at most max_wait_ms of extra latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from prometheus_client import Counter, Histogram

from lmops.serve.generate import GenRequest, GenResult, TokenCallback

log = logging.getLogger("lmops.serve")

BATCH_SIZE = Histogram("lmops_batch_size", "Requests per generation micro-batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
BATCH_SECONDS = Histogram("lmops_batch_seconds", "Wall time of one generation micro-batch")
GENERATED_TOKENS = Counter("lmops_generated_tokens", "Tokens generated")

# run(requests, on_token) -> results, called in the worker thread
RunBatch = Callable[[list[GenRequest], TokenCallback | None], list[GenResult]]


@dataclass
class _Job:
    request: GenRequest
    future: asyncio.Future
    # per-token callback for streaming (called in the worker thread); None for plain requests
    on_token: Callable[[int], None] | None = None
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, run: RunBatch, max_batch_size: int, max_wait_ms: float):
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmops-generate")
        self.last_batch_size = 0

    async def submit(self, request: GenRequest, on_token: Callable[[int], None] | None = None) -> GenResult:
        self._ensure_running()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(request, fut, on_token))
        return await fut

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
            if batch:
                await self._run_batch(loop, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        def on_token(row: int, tok: int) -> None:
            cb = batch[row].on_token
            if cb is not None:
                cb(tok)

        streaming = any(j.on_token is not None for j in batch)
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._executor, self._run, [j.request for j in batch], on_token if streaming else None)
        except Exception as e:  # one bad batch fails its requests, not the server
            log.exception("generation failed for a batch of %d", len(batch))
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        seconds = time.perf_counter() - t0
        self.last_batch_size = len(batch)
        BATCH_SIZE.observe(len(batch))
        BATCH_SECONDS.observe(seconds)
        GENERATED_TOKENS.inc(sum(len(r.token_ids) for r in results))
        log.debug("batch of %d in %.1f ms", len(batch), seconds * 1000)
        for j, r in zip(batch, results):
            if not j.future.done():
                j.future.set_result(r)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
