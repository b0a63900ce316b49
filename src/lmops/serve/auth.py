"""API keys, as vLLM's ``--api-key``: ``Authorization: Bearer KEY`` on every inference route.

Keys come from ``serve.api_key_file`` (one per line) and ``$LMOPS_API_KEYS`` (comma-separated); on
Kubernetes the environment variable is filled from a Secret (lmops.serve.inference_service), so a key is
never a literal in a manifest, a config or a log line. Which paths need a key is decided here once for
HTTP (``needs_key``) and gRPC (``GRPC_OPEN_METHODS``): probes (KServe v1 readiness ``/v1/models/NAME``, v2
health and model readiness), ``/metrics`` and ``/`` stay open, so kubelets and Prometheus need no key.

The comparison takes the same time whatever the key: the presented key and every configured key are
hashed to fixed-length digests and compared with ``hmac.compare_digest``, and every configured key is
compared (no early exit), so neither the length nor the position of a match shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from lmops.config import ServeConfig
from lmops.errors import LmopsError

ENV_KEYS = "LMOPS_API_KEYS"

# gRPC (KServe's v2 service): liveness and readiness stay open, like their REST twins
GRPC_OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady"})


class ApiKeyError(LmopsError, ValueError):
    """The configured keys cannot be read (the message names the file, never a key)."""


def load_keys(cfg: ServeConfig, environ: dict[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    keys = [k.strip() for k in environ.get(ENV_KEYS, "").split(",") if k.strip()]
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ApiKeyError(f"serve.api_key_file {path}: cannot read it ({type(e).__name__}: "
                              f"{getattr(e, 'strerror', None) or e})") from None
        file_keys = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not file_keys:
            raise ApiKeyError(f"serve.api_key_file {path}: holds no key (one per line)")
        keys += file_keys
    bad = [i for i, k in enumerate(keys) if any(c.isspace() for c in k) or not k.isprintable()]
    if bad:
        raise ApiKeyError(f"API key #{bad[0] + 1} holds whitespace or unprintable characters")
    return keys


def client_key(cfg: ServeConfig, environ: dict[str, str] | None = None) -> str | None:
    """The key lmops' own clients (deploy's smoke request, the example) send: the first configured one."""
    keys = load_keys(cfg, environ)
    return keys[0] if keys else None


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """The server's keys; ``identify`` answers the matching key's id (for per-key limits) or None."""

    def __init__(self, keys: list[str]):
        self._digests = [_digest(k) for k in dict.fromkeys(keys)]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @property
    def count(self) -> int:
        return len(self._digests)

    def identify(self, authorization: str | bytes | None) -> str | None:
        """``authorization``: the header's value ("Bearer KEY"). The id is a short digest of the key, safe to log."""
        if isinstance(authorization, str):
            authorization = authorization.encode("utf-8", "surrogatepass")
        scheme, _, presented = (authorization or b"").partition(b" ")
        given = _digest(presented.strip() if scheme.lower() == b"bearer" else b"\0no key")
        match = None
        for d in self._digests:  # all of them, always: the time does not depend on which one matches
            if hmac.compare_digest(d, given):
                match = d
        return None if match is None else "key:" + match.hex()[:12]


def needs_key(path: str) -> bool:
    """Inference, model listing and metadata need a key; probes, /metrics and the root do not."""
    if path in ("/", "/metrics", "/v2/health/live", "/v2/health/ready", "/v2/health/live/", "/v2/health/ready/"):
        return False
    if path.endswith("/ready"):  # /v2/models/NAME[/versions/V]/ready
        return False
    # /v1/models/NAME is KServe v1's readiness route (the kubelet's probe); the list /v1/models is not
    for prefix in ("/v1/models/",):
        rest = path[len(prefix):]
        if path.startswith(prefix) and rest and "/" not in rest and ":" not in rest:
            return False
    return True
