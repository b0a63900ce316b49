"""What the canary gates measure, read from the model servers themselves (small I/O, no decisions).

- ``metrics``: a server's Prometheus /metrics -> requests, 5xx errors, p95 latency
- ``quality``: probe texts scored through OpenAI-compatible /v1/completions -> bits per byte
"""

from lmops.observe.metrics import ServerMetrics, parse_metrics, read_metrics
from lmops.observe.quality import ProbeError, bits_per_byte, probe_texts

__all__ = ["ProbeError", "ServerMetrics", "bits_per_byte", "parse_metrics", "probe_texts", "read_metrics"]
