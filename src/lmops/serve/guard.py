"""ASGI middleware every HTTP request passes through: body limits, abandoned requests, escaped errors.

- Body: larger than ``serve.max_body_bytes`` is a 413 (from Content-Length before reading, or while
  reading a chunked body); a body that has not fully arrived after ``serve.body_read_timeout_s`` is a
  408. Both close the connection (``connection: close``): the rest of that body may still be on the
  way, and reading it as the next request would be wrong. Every protocol gets the same limits.
- Abandoned requests: once the body is read, the client's side of the connection is watched; when it
  disconnects before the response is complete, the route's task is cancelled. Cancellation reaches
  the micro-batcher (lmops.serve.batcher), which stops generating for that request.
- Errors that escape a route become a complete response in the route's protocol shape
  (lmops.serve.errors), so the connection stays usable and no exception text or traceback leaks.
  A response that had already started cannot change its status: the connection is closed without
  the final chunk, which is how HTTP/1.1 says "incomplete" (streams send an error event first,
  lmops.serve.openai_api).
"""

from __future__ import annotations

import asyncio

from lmops.config import ServeConfig
from lmops.serve.errors import error_bytes, is_openai_path, status_and_message


class RequestGuard:
    def __init__(self, app, cfg: ServeConfig):
        self.app = app
        self.cfg = cfg

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        openai = is_openai_path(scope["path"])
        body = await self._read_body(scope, receive, send, openai)
        if body is None:
            return  # answered (413/408) or the client left before sending its body
        state = {"started": False, "complete": False, "client_gone": False}
        gone = asyncio.Event()
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        task = asyncio.current_task()
        watcher = asyncio.ensure_future(self._watch(receive, gone, task, state))
        try:
            await self._run(scope, replay, tracked_send, openai, state)
        except asyncio.CancelledError:
            if not state["client_gone"]:
                raise
            task.uncancel()  # the client disconnected: nobody to answer, nothing else to cancel
        finally:
            watcher.cancel()

    async def _run(self, scope, receive, send, openai: bool, state: dict) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as e:
            status, message = status_and_message(e)
            if not state["started"]:
                await _respond(send, status, error_bytes(openai, status, message))
            # started but not complete: returning without the last chunk makes the server close the
            # connection, the only honest end for a response that cannot be finished

    @staticmethod
    async def _watch(receive, gone: asyncio.Event, task: asyncio.Task, state: dict) -> None:
        # runs beside the route; the route's own task is cancelled (not a copy of it) so that no extra
        # task per request is needed
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                if not state["complete"] and not task.done():
                    state["client_gone"] = True
                    task.cancel()
                return

    async def _read_body(self, scope, receive, send, openai: bool) -> bytes | None:
        limit = self.cfg.max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _respond(send, 413, error_bytes(openai, 413, f"request body is larger than {limit} bytes"), close=True)
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.body_read_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                await _respond(send, 408, error_bytes(
                    openai, 408, f"request body not received within {self.cfg.body_read_timeout_s:g} s"), close=True)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _respond(send, 413, error_bytes(openai, 413, f"request body is larger than {limit} bytes"), close=True)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _respond(send, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
