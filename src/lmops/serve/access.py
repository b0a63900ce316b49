"""ASGI middleware in front of every HTTP route: the API key, then the rate limits and the admission queue.

Refusals carry the route's protocol error body (OpenAI's or KServe's ``{"error": ...}``, see
lmops.serve.errors): 401 with ``WWW-Authenticate: Bearer``, 429 and 503 with ``Retry-After``. They are
answered before the body is read, so a refused request costs no parsing, tokenizing or generation.
The admitted request's ticket is bound for the route (lmops.serve.admission.charge) and released when
its answer is complete (for a stream: after the last byte).
"""

from __future__ import annotations

from lmops.serve import admission
from lmops.serve.admission import Admission, Refusal
from lmops.serve.auth import ApiKeys, needs_key
from lmops.serve.errors import error_bytes, is_openai_path
from lmops.serve.http_metrics import route_kind


class AccessControl:
    def __init__(self, app, keys: ApiKeys, gate: Admission):
        self.app = app
        self.keys = keys
        self.gate = gate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        identity = None
        if self.keys.enabled and needs_key(path):
            identity = self.keys.identify(header(scope, b"authorization"))
            if identity is None:
                return await _refuse(send, path, admission.unauthorized())
        if route_kind(path) is None:  # not an inference route: no limits, no queue
            return await self.app(scope, receive, send)
        ticket = self.gate.admit(identity or "client:" + ((scope.get("client") or ("?",))[0]))
        if isinstance(ticket, Refusal):
            return await _refuse(send, path, ticket)
        token = admission.bind(ticket)
        try:
            await self.app(scope, receive, send)
        finally:
            admission.unbind(token)
            ticket.release()


def header(scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower-case bytes, as ASGI spells names)."""
    for k, v in scope.get("headers") or ():
        if k == name:
            return v
    return None


async def _refuse(send, path: str, refusal: Refusal) -> None:
    body = error_bytes(is_openai_path(path), refusal.status, refusal.message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if refusal.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if refusal.retry_after_s is not None:
        headers.append((b"retry-after", str(refusal.retry_after_s).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
