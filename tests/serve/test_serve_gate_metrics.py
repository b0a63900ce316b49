"""The canary gates' inputs read from a real `lmops serve`: /metrics -> requests, 5xx errors, p95 latency."""

from __future__ import annotations

import requests

from lmops.observe.metrics import histogram_quantile, parse_metrics, read_metrics


def test_metrics_of_a_real_server(server):
    before = read_metrics(server.base)
    url = server.url(f"/v1/models/{server.name}:predict")
    for _ in range(4):
        assert requests.post(url, json={"instances": [{"prompt": "def f", "max_new_tokens": 2}]}, timeout=30).ok
    assert requests.post(url, json={"instances": [{"prompt": 5}]}, timeout=30).status_code == 400
    for _ in range(3):  # probes and listings are not inference traffic
        requests.get(server.url(f"/v1/models/{server.name}"), timeout=5)
    after = read_metrics(server.base)
    assert after.requests - before.requests == 5
    assert after.errors == before.errors, "a client's 400 is not the server's error"
    assert after.p95_ms is not None and 0 < after.p95_ms < 30_000


def test_5xx_counted_as_errors(server):
    """The server's own exposition with one series relabelled 5xx (a healthy server gives none on demand)."""
    requests.post(server.url(f"/v1/models/{server.name}:predict"),
                  json={"instances": [{"prompt": "x", "max_new_tokens": 1}]}, timeout=30)
    text = requests.get(server.url("/metrics"), timeout=5).text
    m = parse_metrics(text)
    lines = [ln for ln in text.splitlines() if ln.startswith("lmops_http_requests_total{") and 'code="200"' in ln]
    assert lines
    broken = text.replace(lines[0], lines[0].replace('code="200"', 'code="503"'))
    m5 = parse_metrics(broken)
    assert m5.requests == m.requests and m5.errors == float(lines[0].rsplit(" ", 1)[1]) > 0
    assert 0 < m5.error_rate <= 1


def test_histogram_quantile():
    b = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, b) == 0.1
    assert abs(histogram_quantile(0.95, b) - 0.75) < 1e-9
    assert histogram_quantile(0.95, {0.1: 0.0, float("inf"): 10.0}) == 0.1  # all beyond the last bound
    assert histogram_quantile(0.95, {}) is None and histogram_quantile(0.95, {1.0: 0.0}) is None
