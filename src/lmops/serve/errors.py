"""Error responses in each protocol's own shape, and which exceptions become which status.

KServe's v1/v2 clients read ``{"error": "message"}``; OpenAI clients read
``{"error": {"message", "type", "param", "code"}}``. A message never carries an exception's text
unless the exception is one of ours that was written for the client (BadRequest and friends):
anything else is "internal server error" to the client and one log line with the cause on the server.
"""

from __future__ import annotations

import json
import logging

from lmops.serve.batcher import GenerationFailed
from lmops.serve.params import BadRequest

log = logging.getLogger("lmops.serve")

OPENAI_PREFIXES = ("/openai/",)
# the OpenAI routes that also answer without KServe's /openai prefix (base_url=http://host/v1)
OPENAI_UNPREFIXED = ("/v1/completions", "/v1/chat/completions")


def is_openai_path(path: str) -> bool:
    if path.startswith(OPENAI_PREFIXES) or path in OPENAI_UNPREFIXED:
        return True
    # /v1/models and /v1/models/ID answer both protocols (lmops.serve.openai_api); :predict is v1 only
    return path == "/v1/models" or (path.startswith("/v1/models/") and ":" not in path)


def error_body(openai: bool, status: int, message: str, code: str | None = None) -> dict:
    if openai:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return {"error": message}


def error_bytes(openai: bool, status: int, message: str) -> bytes:
    return json.dumps(error_body(openai, status, message)).encode()


def status_and_message(exc: BaseException) -> tuple[int, str]:
    """What the client is told about an exception that escaped a route."""
    if isinstance(exc, BadRequest):
        return exc.status, str(exc)
    if isinstance(exc, GenerationFailed):
        return 500, str(exc)
    log.error("internal error: %s: %s", type(exc).__name__, exc)
    log.debug("internal error", exc_info=exc)
    return 500, "internal server error"
