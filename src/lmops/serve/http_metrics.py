"""Per-request Prometheus metrics for every inference route (v1, v2, OpenAI), on the server's /metrics.

KServe's own histograms (request_predict_seconds...) cover only v1/v2 and carry no status code, so they
cannot give an error rate; the canary gates need both, for whichever protocol the traffic uses.
Only inference routes are counted: probes, /metrics and model listings would dilute the error rate.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("lmops_http_requests", "Inference requests answered, by route kind and status code",
                   ["route", "code"])
LATENCY = Histogram("lmops_http_request_duration_seconds", "Inference request latency (until the last byte)",
                    ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


def route_kind(path: str) -> str | None:
    if path.endswith(":predict"):
        return "v1"
    if path.endswith("/infer") or path.endswith("/generate"):
        return "v2"
    if path.endswith("/completions"):
        return "openai"
    return None


def observe(path: str, status: int, seconds: float) -> None:
    kind = route_kind(path)
    if kind is not None:
        REQUESTS.labels(kind, str(status)).inc()
        LATENCY.labels(kind).observe(seconds)
