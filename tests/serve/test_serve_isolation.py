"""One bad request harms no other: validation before batching, per-request retry, protocol-shaped errors,
body limits, and HTTP/1.1 connections that stay usable after an error."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest
import requests

from lmops.serve.batcher import GenerationFailed, MicroBatcher
from lmops.serve.generate import GenRequest, GenResult

# bodies that reach past the type checks of a naive server: NaN and infinities (JSON extensions
# Python's json module reads), integers wider than int64, strings where numbers belong
POISON = [
    ("v1", b'{"instances": [{"prompt": "hi", "temperature": NaN}]}'),
    ("v1", b'{"instances": [{"prompt": "hi", "seed": 18446744073709551617}]}'),
    ("v2", b'{"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],'
           b' "parameters": {"temperature": Infinity}}'),
    ("openai", b'{"model": "tiny", "prompt": "hi", "temperature": NaN}'),
    ("openai", b'{"model": "tiny", "prompt": "hi", "top_p": -Infinity}'),
    ("openai", b'{"model": "tiny", "prompt": "hi", "seed": 99999999999999999999999}'),
    ("chat", b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}'),
]


def _path(server, protocol: str) -> str:
    return {"v1": f"/v1/models/{server.name}:predict", "v2": f"/v2/models/{server.name}/infer",
            "openai": "/v1/completions", "chat": "/v1/chat/completions"}[protocol]


def _valid(server, i: int) -> tuple[str, dict]:
    # a temperature of 1e-300 is valid: it used to overflow to NaN inside the sampler and fail its batch
    return [
        ("v1", {"instances": [{"prompt": f"burst {i}", "max_new_tokens": 12, "temperature": 1e-300, "seed": i}]}),
        ("openai", {"model": server.name, "prompt": f"burst {i}", "max_tokens": 12, "temperature": 0.7,
                    "presence_penalty": 0.5, "frequency_penalty": 0, "logprobs": 2}),
        ("v2", {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": [f"burst {i}"]}],
                "parameters": {"max_new_tokens": 12}}),
        ("chat", {"model": server.name, "messages": [{"role": "user", "content": f"burst {i}"}], "max_tokens": 12}),
    ][i % 4]


def test_poisoned_requests_in_a_concurrent_burst_harm_no_other(server):
    results: dict[str, list] = {"valid": [], "poison": []}
    barrier = threading.Barrier(24 + len(POISON))

    def send(kind: str, protocol: str, data: bytes) -> None:
        barrier.wait()
        r = requests.post(server.url(_path(server, protocol)), data=data, timeout=60,
                          headers={"content-type": "application/json"})
        results[kind].append((protocol, r.status_code, r.text))

    threads = [threading.Thread(target=send, args=("valid", p, json.dumps(b).encode()))
               for p, b in (_valid(server, i) for i in range(24))]
    threads += [threading.Thread(target=send, args=("poison", p, d)) for p, d in POISON]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results["valid"]) == 24 and all(code == 200 for _, code, _ in results["valid"]), results["valid"]
    for protocol, code, text in results["poison"]:
        assert code == 400, (protocol, code, text)
        error = json.loads(text)["error"]
        message = error["message"] if protocol in ("openai", "chat") else error
        assert "Traceback" not in message and "Error :" not in message, message
    assert "Traceback" not in server.log()


def test_a_failing_batch_is_retried_per_request_so_only_the_culprit_fails():
    """The real MicroBatcher over a run function that fails whenever one particular prompt is in the batch."""
    poison = [666]
    batches: list[int] = []

    def run(reqs, on_token):
        batches.append(len(reqs))
        if any(r.prompt_ids == poison for r in reqs):
            raise RuntimeError("this prompt breaks the model")
        return [GenResult([1], "ok", "length", len(r.prompt_ids)) for r in reqs]

    async def burst():
        batcher = MicroBatcher(run, max_batch_size=8, max_wait_ms=50)
        try:
            reqs = [GenRequest([i + 1], 1) for i in range(5)] + [GenRequest(poison, 1)]
            return await asyncio.gather(*(batcher.submit(r) for r in reqs), return_exceptions=True)
        finally:
            batcher.close()

    out = asyncio.run(burst())
    assert [r.text for r in out[:5]] == ["ok"] * 5
    assert isinstance(out[5], GenerationFailed) and "breaks" not in str(out[5])
    assert batches[0] == 6 and sorted(batches[1:]) == [1] * 6  # one failed batch, then one run each


def test_errors_keep_the_connection_usable_and_in_protocol_shape(server):
    conn = http.client.HTTPConnection("127.0.0.1", int(server.base.rsplit(":", 1)[1]), timeout=30)
    try:
        for path, body, shape in [
            ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "bogus": 1}', "openai"),
            (f"/v1/models/{server.name}:predict", b'{"instances": [{"prompt": ""}]}', "kserve"),
            ("/v1/chat/completions", b"{not json", "openai"),
        ]:
            conn.request("POST", path, body, {"content-type": "application/json"})
            r = conn.getresponse()
            error = json.loads(r.read())["error"]
            assert r.status == 400 and r.getheader("connection") != "close"
            assert isinstance(error, dict) == (shape == "openai") and error
            # the same connection answers the next request
            conn.request("POST", "/v1/completions", json.dumps({"model": server.name, "prompt": "hi", "max_tokens": 2}),
                         {"content-type": "application/json"})
            ok = conn.getresponse()
            assert ok.status == 200 and len(json.loads(ok.read())["choices"]) == 1
    finally:
        conn.close()


def test_body_limits_apply_to_every_protocol(server):
    for path in ("/v1/completions", f"/v1/models/{server.name}:predict", f"/v2/models/{server.name}/infer"):
        r = requests.post(server.url(path), data=b"x" * ((1 << 20) + 1), timeout=30,
                          headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.headers["connection"] == "close", (path, r.text)


def test_a_body_that_never_finishes_is_a_408_and_the_connection_closes(server):
    port = int(server.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"model\":")
        reply = b""
        while chunk := s.recv(4096):  # the server closes after answering
            reply += chunk
        waited = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert 0.8 < waited < 8, waited  # serve.body_read_timeout_s=1 in the fixture


@pytest.mark.parametrize("prompt_bytes", [1 << 20])
def test_a_huge_prompt_is_refused_before_tokenizing(server, prompt_bytes):
    # inside the body limit (a 0.9 MB prompt), far over max_prompt_bytes: answered without tokenizing
    prompt = "word " * (prompt_bytes // 6)
    t0 = time.perf_counter()
    r = requests.post(server.url("/v1/completions"), json={"model": server.name, "prompt": prompt}, timeout=30)
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]
    assert time.perf_counter() - t0 < 0.5
