"""A client that disconnects or times out stops its generation and frees its batch slot.

The model here is big enough (hidden 256, 4 layers, 4096 positions) that 3000 tokens take many
seconds on one thread, so a request abandoned after a second must show up as far fewer generated
tokens and a server that answers the next client promptly.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
import requests

from conftest import start_server, stop_server
from tiny_model import make_model_dir

LONG = 3000


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    model = make_model_dir(tmp_path_factory.mktemp("slow") / "model", layers=4, hidden=256, max_positions=4096)
    srv = start_server(model, tmp_path_factory.mktemp("slow-srv") / "server.log",
                       f"serve.max_new_tokens={LONG}", "serve.max_wait_ms=1",
                       "serve.response_cache_size=0")  # every "next" request must generate its 4 tokens
    yield srv
    stop_server(srv)


def _metric(server, name: str) -> float:
    text = requests.get(server.url("/metrics"), timeout=10).text
    m = re.search(rf"^{name}_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _assert_abandoned_work_stopped(server, tokens_before: float, cancelled_before: float) -> None:
    # the next client is answered promptly: the abandoned row left the batch
    t0 = time.perf_counter()
    r = requests.post(server.url("/v1/completions"), timeout=60,
                      json={"model": server.name, "prompt": "next", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert time.perf_counter() - t0 < 5
    deadline = time.monotonic() + 10
    while _metric(server, "lmops_cancelled_requests") < cancelled_before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(server, "lmops_cancelled_requests") == cancelled_before + 1
    generated = _metric(server, "lmops_generated_tokens") - tokens_before - 4
    assert 0 < generated < LONG / 2, generated  # what ran before the cancel, no more


def _how_long_for(server, tokens: int) -> float:
    t0 = time.perf_counter()
    r = requests.post(server.url("/v1/completions"), timeout=120,
                      json={"model": server.name, "prompt": "hi", "max_tokens": tokens, "temperature": 0})
    assert r.status_code == 200
    return time.perf_counter() - t0


def test_a_client_that_times_out_stops_its_generation(slow_server):
    # the budget makes the client give up at about a tenth of the full generation
    per_token = _how_long_for(slow_server, 200) / 200
    tokens, cancelled = _metric(slow_server, "lmops_generated_tokens"), _metric(slow_server, "lmops_cancelled_requests")
    with pytest.raises(requests.ReadTimeout):
        requests.post(slow_server.url("/v1/models/tiny:predict"), timeout=max(per_token * LONG / 10, 0.3),
                      json={"instances": [{"prompt": "abandoned", "max_new_tokens": LONG}]})
    _assert_abandoned_work_stopped(slow_server, tokens, cancelled)


def test_a_streaming_client_that_disconnects_stops_its_generation(slow_server):
    tokens, cancelled = _metric(slow_server, "lmops_generated_tokens"), _metric(slow_server, "lmops_cancelled_requests")
    r = requests.post(slow_server.url("/v1/completions"), stream=True, timeout=60,
                      json={"model": slow_server.name, "prompt": "abandoned", "max_tokens": LONG, "stream": True})
    lines = r.iter_lines()
    events = [line for line in (next(lines) for _ in range(6)) if line.startswith(b"data:")]
    assert events
    # close the socket itself: a client that goes away mid-stream
    r.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
    r.close()
    _assert_abandoned_work_stopped(slow_server, tokens, cancelled)
