"""Per-request serving metrics under vLLM's Prometheus names, so dashboards and alerts written for vLLM read
lmops' server too (``model_name`` label as vLLM sets it).

- ``vllm:time_to_first_token_seconds``: from entering the batcher's queue to the first generated token
- ``vllm:time_per_output_token_seconds``: between consecutive generated tokens (inter-token latency)
- ``vllm:e2e_request_latency_seconds``: from entering the queue to the last token
- ``vllm:prompt_tokens_total`` / ``vllm:generation_tokens_total``: tokens read and written
- ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``: in the running batch / queued behind it
- ``vllm:request_success_total{finished_reason}``: finished generations ("stop", "length")

lmops' own (no vLLM equivalent): ``lmops_rejected_requests_total{reason}`` (lmops.serve.admission),
``lmops_response_cache_{hits,misses}_total`` (lmops.serve.response_cache: whole answers, not vLLM's
prefix cache), ``lmops_batch_size`` (lmops.serve.batcher) and ``lmops_http_*`` per protocol and status
code (lmops.serve.http_metrics), which the operator's canary gates and the chart's alerts read.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = ["model_name"]
_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
            40.0, 80.0)  # vLLM's buckets for time to first token and end-to-end latency
_PER_TOKEN = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

TIME_TO_FIRST_TOKEN = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                                LABELS, buckets=_LATENCY)
TIME_PER_OUTPUT_TOKEN = Histogram("vllm:time_per_output_token_seconds",
                                  "Histogram of time per output token in seconds.", LABELS, buckets=_PER_TOKEN)
E2E_LATENCY = Histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                        LABELS, buckets=_LATENCY)
PROMPT_TOKENS = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", LABELS)
GENERATION_TOKENS = Counter("vllm:generation_tokens", "Number of generation tokens processed.", LABELS)
RUNNING = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", LABELS)
WAITING = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", LABELS)
SUCCESS = Counter("vllm:request_success", "Count of successfully processed requests.", LABELS + ["finished_reason"])
