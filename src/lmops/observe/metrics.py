"""Error rate and p95 latency of a model server, from its Prometheus /metrics.

Reads ``lmops_http_requests_total{route,code}`` and ``lmops_http_request_duration_seconds`` (see
lmops.serve.http_metrics). Counters are cumulative since the server started; a canary is a fresh
revision (a fresh process), so its totals are its totals. Only 5xx count as errors: a 4xx is the
client's mistake and says nothing about the version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REQUESTS = "lmops_http_requests"
LATENCY = "lmops_http_request_duration_seconds"


@dataclass(frozen=True)
class ServerMetrics:
    requests: float
    errors: float
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def parse_metrics(text: str, quantile: float = 0.95) -> ServerMetrics:
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == REQUESTS and sample.name == REQUESTS + "_total":
                requests += sample.value
                if sample.labels.get("code", "").startswith("5"):
                    errors += sample.value
            elif family.name == LATENCY and sample.name == LATENCY + "_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value  # summed over routes
    p = histogram_quantile(quantile, buckets)
    return ServerMetrics(requests, errors, None if p is None else p * 1000)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank; a rank in
    the +Inf bucket answers the largest finite bound (the budget is then surely exceeded if it is lower)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def read_metrics(base_url: str, timeout: float = 5.0) -> ServerMetrics:
    import requests

    r = requests.get(f"{base_url.rstrip('/')}/metrics", timeout=timeout)
    r.raise_for_status()
    return parse_metrics(r.text)
