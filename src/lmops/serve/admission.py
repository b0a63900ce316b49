"""Who may start an inference request now: rate limits per key (or client) and a bounded admission queue.

- Rate limits: two token buckets per identity (the API key's id, or the client's address without keys),
  requests per minute and tokens per minute, each holding one minute's worth and refilled continuously.
  A request takes one request token when admitted. Generated + prompt tokens are charged when its
  generation finishes (their number is not known before), so the token bucket may go into debt; an
  identity in debt is refused until it refills. Past either limit: 429 with Retry-After (seconds until
  the bucket allows the next request).
- Load shedding: at most ``serve.max_queued_requests`` inference requests are admitted at once (running or
  waiting for the batcher); one more is answered 503 with Retry-After at once, so an overloaded server
  answers quickly instead of growing a queue without bound.

The HTTP middleware (lmops.serve.access) and the gRPC interceptor use the same ``Admission`` object, so
every protocol shares one set of buckets and one queue. ``charge`` finds the request's buckets through
a context variable set at admission: the model (lmops.serve.model) charges without knowing who asked.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from lmops.config import ServeConfig

REJECTED = Counter("lmops_rejected_requests", "Inference requests refused before running, by reason",
                   ["reason"])  # unauthorized | rate_limited | overloaded
ADMITTED = Gauge("lmops_admitted_requests", "Inference requests admitted and not yet answered")
MAX_IDENTITIES = 10_000  # buckets kept for the most recently seen keys/clients (older ones start afresh)


class TokenBucket:
    def __init__(self, per_minute: float, now: float):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.at = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_s(self, now: float, need: float = 1.0) -> float:
        """0 when ``need`` is available now, else the seconds until it is."""
        self._refill(now)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)  # first: a stale full bucket must not be capped after the debt is taken
        self.level -= amount


@dataclass
class Refusal:
    status: int  # 401, 429 or 503
    reason: str  # the lmops_rejected_requests label
    message: str
    retry_after_s: int | None = None


class Ticket:
    """One admitted request: ``release`` when its answer is complete, ``charge`` its tokens."""

    def __init__(self, admission: "Admission", identity: str):
        self._admission = admission
        self.identity = identity
        self._released = False

    def charge(self, tokens: int) -> None:
        self._admission._charge(self.identity, tokens)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()


_current: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("lmops_admission_ticket", default=None)


def bind(ticket: Ticket) -> contextvars.Token:
    return _current.set(ticket)


def unbind(token: contextvars.Token) -> None:
    _current.reset(token)


def charge(tokens: int) -> None:
    """Charge ``tokens`` to the identity of the request being served (no-op outside an admitted request)."""
    ticket = _current.get()
    if ticket is not None and tokens:
        ticket.charge(tokens)


class Admission:
    def __init__(self, cfg: ServeConfig, clock=time.monotonic):
        self.cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()  # gRPC handlers and the HTTP loop both admit
        self._requests: OrderedDict[str, TokenBucket] = OrderedDict()
        self._tokens: OrderedDict[str, TokenBucket] = OrderedDict()
        self.in_flight = 0

    def admit(self, identity: str) -> Ticket | Refusal:
        cfg = self.cfg
        with self._lock:
            now = self._clock()
            req = self._bucket(self._requests, identity, cfg.rate_limit_requests_per_minute, now)
            tok = self._bucket(self._tokens, identity, cfg.rate_limit_tokens_per_minute, now)
            waits = [b.wait_s(now) for b in (req, tok) if b is not None]
            if any(waits):
                REJECTED.labels("rate_limited").inc()
                which = "requests" if req is not None and req.wait_s(now) else "tokens"
                limit = cfg.rate_limit_requests_per_minute if which == "requests" else cfg.rate_limit_tokens_per_minute
                return Refusal(429, "rate_limited", f"rate limit reached: {limit} {which} per minute; retry later",
                               max(1, math.ceil(max(waits))))
            if self.in_flight >= cfg.max_queued_requests:
                REJECTED.labels("overloaded").inc()
                return Refusal(503, "overloaded", f"server overloaded: {cfg.max_queued_requests} requests already "
                               "admitted; retry later", 1)
            if req is not None:
                req.take(1, now)
            self.in_flight += 1
            ADMITTED.set(self.in_flight)
        return Ticket(self, identity)

    @staticmethod
    def _bucket(table: OrderedDict, identity: str, per_minute: int | None, now: float) -> TokenBucket | None:
        if per_minute is None:
            return None
        bucket = table.get(identity)
        if bucket is None:
            bucket = table[identity] = TokenBucket(per_minute, now)
            if len(table) > MAX_IDENTITIES:
                table.popitem(last=False)
        table.move_to_end(identity)
        return bucket

    def _charge(self, identity: str, tokens: int) -> None:
        with self._lock:
            now = self._clock()
            bucket = self._bucket(self._tokens, identity, self.cfg.rate_limit_tokens_per_minute, now)
            if bucket is not None:
                bucket.take(tokens, now)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            ADMITTED.set(self.in_flight)


def unauthorized() -> Refusal:
    REJECTED.labels("unauthorized").inc()
    return Refusal(401, "unauthorized", "missing or invalid API key: send Authorization: Bearer <key>")
