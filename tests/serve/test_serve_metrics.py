"""/metrics read with Prometheus' own text parser: vLLM's names with the numbers a request implies, lmops' own,
and every metric the chart's alerts and Grafana dashboard query (and the operator's gates read) exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import requests
import yaml

from lmops.observe import metrics as gate_metrics

CHART = Path(__file__).resolve().parents[2] / "helm" / "lmops"
VLLM = ["vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds", "vllm:e2e_request_latency_seconds",
        "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:num_requests_running", "vllm:num_requests_waiting",
        "vllm:request_success"]
LMOPS = ["lmops_http_requests", "lmops_http_request_duration_seconds", "lmops_rejected_requests",
         "lmops_admitted_requests", "lmops_response_cache_hits", "lmops_response_cache_misses", "lmops_batch_size"]
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}


def scrape(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(requests.get(server.url("/metrics"), timeout=10).text)}


def value(families: dict, sample: str, **labels) -> float:
    family = families[re.sub(r"_(total|count|sum|bucket)$", "", sample)]
    return sum(s.value for s in family.samples if s.name == sample and labels.items() <= s.labels.items())


def test_vllm_and_lmops_metrics_count_what_a_request_did(server):
    before = scrape(server)
    r = requests.post(server.url("/v1/completions"), timeout=60,
                      json={"model": server.name, "prompt": "Metrics please", "max_tokens": 5, "temperature": 0.5})
    assert r.status_code == 200
    prompt_tokens = r.json()["usage"]["prompt_tokens"]
    after = scrape(server)
    assert set(VLLM + LMOPS) <= set(after), sorted(set(VLLM + LMOPS) - set(after))
    model = {"model_name": server.name}

    def delta(sample: str, **labels) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    assert delta("vllm:generation_tokens_total", **model) == 5
    assert delta("vllm:prompt_tokens_total", **model) == prompt_tokens
    assert delta("vllm:time_to_first_token_seconds_count", **model) == 1
    assert delta("vllm:time_per_output_token_seconds_count", **model) == 4  # the gaps between 5 tokens
    assert delta("vllm:e2e_request_latency_seconds_count", **model) == 1
    assert delta("vllm:request_success_total", finished_reason="length", **model) == 1
    assert value(after, "vllm:num_requests_running", **model) == 0


def chart_queries() -> list[str]:
    from helm_python.chart import Chart

    on = {"monitoring": {k: {"enabled": True} for k in ("podMonitor", "prometheusRule", "grafanaDashboard")}}
    with Chart.load(str(CHART)) as chart:
        docs = [d for text in chart.render(on, name="lmops", namespace="lmops").values()
                for d in yaml.safe_load_all(text) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"PodMonitor", "PrometheusRule", "ConfigMap"} <= set(kinds)
    with Chart.load(str(CHART)) as chart:
        off = {d["kind"] for text in chart.render({}, name="lmops", namespace="lmops").values()
               for d in yaml.safe_load_all(text) if d}
    assert not off & {"PodMonitor", "PrometheusRule", "ConfigMap"}  # off by default
    rules = [r["expr"] for g in kinds["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    (dashboard,) = [json.loads(v) for v in kinds["ConfigMap"]["data"].values()]
    panels = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return rules + panels


def test_alerts_dashboard_and_gates_query_metrics_that_exist(server):
    families = scrape(server)
    exported = {f.name + suffix for f in families.values() for suffix in SUFFIXES.get(f.type, ("",))}
    queries = chart_queries()
    named = {m for q in queries for m in re.findall(r"\b(?:lmops_[a-z0-9_]+|vllm:[a-z0-9_:]+)", q)}
    assert named and named <= exported, sorted(named - exported)
    # the operator's canary gates read the same series the alerts do
    assert {gate_metrics.REQUESTS + "_total", gate_metrics.LATENCY + "_bucket"} <= named <= exported
