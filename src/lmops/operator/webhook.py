"""MLflow registry webhooks: verified, deduplicated hints that a model's alias or versions changed.

MLflow signs each delivery: ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``
with ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp`` (Unix seconds). A delivery is accepted only
with a valid signature, a timestamp within ``max_age_s`` of now, and an id not seen before (ids are
remembered for as long as their timestamp would pass, so memory stays bounded). Accepted events wake
the reconcile of the deployments of that model; they carry no decision: the registry, polled, is the
truth, and deliveries are fire-and-forget on MLflow's side (lost ones are covered by the poll).

The same small server answers the operator's probes: ``/healthz`` (alive) and ``/readyz``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger("lmops.operator.webhook")

PATH = "/mlflow/webhook"
MAX_BODY = 64 * 1024
SIGNATURE, TIMESTAMP, DELIVERY_ID = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"


class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class RegistryEvent:
    delivery_id: str
    entity: str
    action: str
    model: str | None
    alias: str | None
    version: str | None


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Verifier:
    def __init__(self, secret: str, max_age_s: float = 300.0, clock: Callable[[], float] = time.time):
        if not secret:
            raise ValueError("a webhook secret is required: unsigned deliveries are never accepted")
        self.secret = secret
        self.max_age_s = max_age_s
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # delivery id -> its timestamp
        self._lock = threading.Lock()

    def verify(self, headers, body: bytes) -> RegistryEvent:
        """The event, or Rejected(status, reason): 400 malformed, 401 forged or stale, 409 replayed."""
        delivery_id, timestamp, signature = (headers.get(h) for h in (DELIVERY_ID, TIMESTAMP, SIGNATURE))
        if not (delivery_id and timestamp and signature):
            raise Rejected(400, f"missing {DELIVERY_ID}, {TIMESTAMP} or {SIGNATURE}")
        try:
            text = body.decode("utf-8")
            ts = float(timestamp)
        except (UnicodeDecodeError, ValueError):
            raise Rejected(400, "timestamp or body unreadable") from None
        expected = sign(self.secret, delivery_id, timestamp, text)
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
            raise Rejected(401, "signature does not match (wrong secret, or the delivery was altered)")
        now = self.clock()
        if abs(now - ts) > self.max_age_s:
            raise Rejected(401, f"timestamp {timestamp} is {now - ts:+.0f}s from now (max {self.max_age_s:.0f}s)")
        with self._lock:
            self._forget_before(now - self.max_age_s)
            if delivery_id in self._seen:
                raise Rejected(409, f"delivery {delivery_id} already received")
            try:
                payload = json.loads(text)
                data = payload.get("data") or {}
                event = RegistryEvent(delivery_id, str(payload.get("entity")), str(payload.get("action")),
                                      data.get("name"), data.get("alias"),
                                      None if data.get("version") is None else str(data.get("version")))
            except (json.JSONDecodeError, AttributeError):
                raise Rejected(400, "body is not an MLflow webhook payload") from None
            self._seen[delivery_id] = ts
        return event

    def _forget_before(self, cutoff: float) -> None:
        # ids whose timestamp is too old to pass the age check anyway
        for key, ts in list(self._seen.items()):
            if ts < cutoff:
                del self._seen[key]


class _Handler(BaseHTTPRequestHandler):
    server: "WebhookServer"

    def log_message(self, fmt, *args):  # one line through logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path in ("/healthz", "/readyz"):
            return self._answer(200, {"ok": True})
        self._answer(404, {"error": "not found"})

    def do_POST(self):
        if self.path != PATH:
            return self._answer(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._answer(413, {"error": "body too large"})
        body = self.rfile.read(length)
        try:
            event = self.server.verifier.verify(self.headers, body)
        except Rejected as e:
            log.warning("webhook delivery rejected (%d): %s", e.status, e.reason)
            self.server.rejected += 1
            return self._answer(e.status, {"error": e.reason})
        self.server.accepted += 1
        log.info("webhook %s.%s model=%s alias=%s version=%s", event.entity, event.action, event.model,
                 event.alias, event.version)
        self.server.on_event(event)
        self._answer(200, {"accepted": event.delivery_id})


class WebhookServer(ThreadingHTTPServer):
    """Serves in a background thread; ``on_event`` is called in that thread for each accepted delivery."""

    daemon_threads = True

    def __init__(self, host: str, port: int, verifier: Verifier, on_event: Callable[[RegistryEvent], None]):
        super().__init__((host, port), _Handler)
        self.verifier = verifier
        self.on_event = on_event
        self.accepted = self.rejected = 0
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{PATH}"

    def start(self) -> "WebhookServer":
        self._thread = threading.Thread(target=self.serve_forever, name="lmops-webhook", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
