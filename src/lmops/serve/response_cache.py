"""HTTP caching of deterministic answers: strong ETags, If-None-Match -> 304, and a bounded LRU.

A generation request is deterministic when it cannot sample differently on a repeat: greedy
(temperature 0) or a fixed seed, and not streamed. Its answer is a function of (model version,
canonical request), so its ETag is a digest of exactly that: the served model's version
(LmopsModel.version, a digest of the model directory's files) and the request body as canonical JSON
(sorted keys, no whitespace) with the route (KServe's /openai prefix removed, so both OpenAI paths
share entries). A new model version gives new ETags, so a stale 304 or cache hit cannot happen.

- ``If-None-Match`` naming the ETag: 304 Not Modified at once, nothing generated.
- a repeat of a recent deterministic request: the stored answer (same body, ids included, as an HTTP
  cache would replay it) with ``x-lmops-cache: hit``, nothing generated. Only 200 answers are stored.
  A request with ``Cache-Control: no-cache`` is generated afresh (and its answer stored).
- anything else that generates (sampled or streamed): ``Cache-Control: no-store``.
- model listings and v2 metadata (GET): an ETag over (version, the answer's bytes), and 304 on a match.
The LRU holds ``serve.response_cache_size`` answers; hits and misses are Prometheus counters.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from prometheus_client import Counter

from lmops.serve.access import header
from lmops.serve.http_metrics import route_kind

HITS = Counter("lmops_response_cache_hits", "Deterministic requests answered from the response cache or with a 304")
MISSES = Counter("lmops_response_cache_misses", "Deterministic requests that had to generate")
OPENAI_PREFIX = "/openai"


def _canonical_route(path: str) -> str:
    return path[len(OPENAI_PREFIX):] if path.startswith(OPENAI_PREFIX + "/") else path


def deterministic(kind: str, body) -> bool:
    """Whether a (parsed JSON) request body of route ``kind`` must give the same answer every time."""
    if not isinstance(body, dict):
        return False
    if kind == "openai":
        # OpenAI's default temperature is 1: only an explicit 0 or a seed is deterministic
        return not body.get("stream") and (body.get("temperature") == 0 or body.get("seed") is not None)
    if kind == "v1":
        instances = body.get("instances")
        return isinstance(instances, list) and bool(instances) and all(_greedy_or_seeded(x) for x in instances)
    if kind == "v2":
        return _greedy_or_seeded(body.get("parameters") or {})
    return False


def _greedy_or_seeded(settings) -> bool:
    # lmops' own protocols default to greedy (temperature 0)
    return isinstance(settings, dict) and (settings.get("temperature", 0) == 0 or settings.get("seed") is not None)


def etag(version: str, *parts: str) -> str:
    h = hashlib.sha256(version.encode())
    for p in parts:
        h.update(b"\0" + p.encode("utf-8", "surrogatepass"))
    return '"' + h.hexdigest()[:32] + '"'


def matches(if_none_match: bytes | None, tag: str) -> bool:
    if not if_none_match:
        return False
    # weak comparison, as RFC 9110 asks for If-None-Match: W/"x" matches "x"
    given = [t.strip().removeprefix("W/") for t in if_none_match.decode("latin-1").split(",")]
    return tag in given


def _is_metadata(path: str) -> bool:
    route = _canonical_route(path)
    return route == "/v1/models" or route.startswith("/v1/models/") and path.startswith(OPENAI_PREFIX) \
        or route == "/v2" or (route.startswith("/v2/models/") and not route.endswith("/ready")
                              and route_kind(route) is None)


class ResponseCache:
    def __init__(self, app, model, size: int):
        self.app = app
        self.model = model  # .version: the served model's digest
        self.size = size
        self._entries: OrderedDict[str, tuple[int, list, bytes]] = OrderedDict()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "GET" and _is_metadata(path):
            return await self._metadata(scope, receive, send)
        kind = route_kind(path)
        if method != "POST" or kind is None:
            return await self.app(scope, receive, send)
        message = await receive()  # lmops.serve.guard already read the whole body (one message)
        body = message.get("body", b"")

        async def replay():
            nonlocal message
            if message is not None:
                m, message = message, None
                return m
            return await receive()

        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None  # the route answers the 400
        if not deterministic(kind, parsed):
            return await self.app(scope, replay, _with_headers(send, [(b"cache-control", b"no-store")]))
        tag = etag(self.model.version, _canonical_route(path),
                   json.dumps(parsed, sort_keys=True, separators=(",", ":")))
        if matches(header(scope, b"if-none-match"), tag):
            HITS.inc()
            return await _send(send, 304, [(b"etag", tag.encode())], b"")
        # a client's "Cache-Control: no-cache" asks for a fresh answer (RFC 9111 5.2.1.4): generate, then store
        fresh = b"no-cache" in (header(scope, b"cache-control") or b"").lower()
        stored = None if fresh else self._entries.get(tag)
        if stored is not None:
            HITS.inc()
            self._entries.move_to_end(tag)
            status, headers, content = stored
            return await _send(send, status, [*headers, (b"x-lmops-cache", b"hit")], content)
        MISSES.inc()
        await self._generate(scope, replay, send, tag)

    async def _generate(self, scope, receive, send, tag: str) -> None:
        start, chunks = {}, []
        validators = [(b"etag", tag.encode()), (b"cache-control", b"no-cache")]

        async def capture(m):
            if m["type"] == "http.response.start":
                start.update(m)
                if m["status"] == 200:
                    m = {**m, "headers": [*m.get("headers", []), *validators]}
            elif m["type"] == "http.response.body":
                chunks.append(m.get("body", b""))
                if not m.get("more_body") and start.get("status") == 200 and self.size:
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    self._entries[tag] = (200, [*headers, *validators], b"".join(chunks))
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
            await send(m)

        await self.app(scope, receive, capture)

    async def _metadata(self, scope, receive, send) -> None:
        start, chunks = {}, []

        async def capture(m):
            if m["type"] == "http.response.start":
                start.update(m)
            elif m["type"] == "http.response.body":
                chunks.append(m.get("body", b""))

        await self.app(scope, receive, capture)
        content = b"".join(chunks)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        if start.get("status") != 200:
            return await _send(send, start.get("status", 500), headers, content)
        tag = etag(self.model.version, scope["path"], content.decode("utf-8", "replace"))
        if matches(header(scope, b"if-none-match"), tag):
            return await _send(send, 304, [(b"etag", tag.encode())], b"")
        await _send(send, 200, [*headers, (b"etag", tag.encode()), (b"cache-control", b"no-cache")], content)


def _with_headers(send, extra: list[tuple[bytes, bytes]]):
    async def wrapped(m):
        if m["type"] == "http.response.start":
            m = {**m, "headers": [*m.get("headers", []), *extra]}
        await send(m)
    return wrapped


async def _send(send, status: int, headers: list, content: bytes) -> None:
    if status != 304:
        headers = [*headers, (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})
