"""A real `lmops serve` process on 127.0.0.1, queried over HTTP in all three protocols."""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest
import requests

from conftest import listening_addresses


def v1(server, instances, **kw):
    return requests.post(server.url(f"/v1/models/{server.name}:predict"), json={"instances": instances}, timeout=30, **kw)


def test_binds_loopback_only(server):
    listening = listening_addresses(int(server.base.rsplit(":", 1)[1]))
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian hex; not 0.0.0.0


def test_v1_predict(server):
    r = v1(server, [{"prompt": "The quick brown fox", "max_new_tokens": 6}, {"prompt": "def add(a, b):", "max_new_tokens": 3}])
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["completion_tokens"] for p in preds] == [6, 3]
    assert all(isinstance(p["text"], str) and p["finish_reason"] == "length" for p in preds)


def test_greedy_is_the_same_through_every_protocol(server):
    prompt = "KServe speaks"
    a = v1(server, [{"prompt": prompt, "max_new_tokens": 8}]).json()["predictions"][0]["text"]
    b = requests.post(server.url(f"/v2/models/{server.name}/infer"), timeout=30, json={
        "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": [prompt]}],
        "parameters": {"max_new_tokens": 8}}).json()["outputs"][0]["data"][0]
    c = requests.post(server.url("/openai/v1/completions"), timeout=30, json={
        "model": server.name, "prompt": prompt, "max_tokens": 8, "temperature": 0}).json()["choices"][0]["text"]
    assert a == b == c and len(a) > 0


def test_v2_infer_with_kserve_client(server):
    from lmops.serve import _kserve  # noqa: F401
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30, retries=0))
        inp = InferInput("prompt", [2], "BYTES", ["Hello", "Serving a language model"])
        try:
            return await client.infer(server.base, InferRequest(server.name, [inp], parameters={"max_new_tokens": 5}),
                                      model_name=server.name)
        finally:
            await client._client.aclose()

    res = asyncio.run(call())
    texts = res.outputs[0].as_numpy().tolist()
    counts = res.outputs[1].as_numpy().tolist()
    assert res.outputs[0].name == "text" and len(texts) == 2 and counts == [5, 5]


def test_openai_completions_and_models(server):
    r = requests.post(server.url("/openai/v1/completions"), timeout=30,
                      json={"model": server.name, "prompt": ["Hello", "The fox"], "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and len(body["choices"]) == 2
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8
    models = requests.get(server.url("/openai/v1/models"), timeout=10).json()
    assert [m["id"] for m in models["data"]] == [server.name]


def test_openai_streaming_matches_non_streaming(server):
    req = {"model": server.name, "prompt": "Serving a", "max_tokens": 10, "temperature": 0}
    full = requests.post(server.url("/openai/v1/completions"), json=req, timeout=30).json()["choices"][0]["text"]
    with requests.post(server.url("/openai/v1/completions"), json={**req, "stream": True}, stream=True, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3  # pieces arrive one by one, then the finish chunk
    assert "".join(c["choices"][0]["text"] for c in chunks) == full
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_seeded_sampling_is_reproducible(server):
    req = [{"prompt": "Hello", "max_new_tokens": 10, "temperature": 1.0, "seed": 7}]
    assert v1(server, req).json() == v1(server, req).json()


BAD_V1 = [
    ({"instances": [{"prompt": ""}]}, "non-empty"),
    ({"instances": [{"prompt": 42}]}, "non-empty string"),
    ({"instances": [{"prompt": "hi", "max_new_tokens": 0}]}, "between 1 and 24"),
    ({"instances": [{"prompt": "hi", "max_new_tokens": 25}]}, "between 1 and 24"),
    ({"instances": [{"prompt": "hi", "max_new_tokens": "5"}]}, "max_new_tokens"),
    ({"instances": [{"prompt": "hi", "temperature": -1}]}, "temperature"),
    ({"instances": [{"prompt": "hi", "beam_width": 2}]}, "unknown field 'beam_width'"),
    ({"instances": [{"prompt": "hi"}], "extra": 1}, "unknown field"),
    ({"instances": []}, "non-empty list"),
    ({"instances": "hi"}, "list"),
    ({"instances": [{"prompt": "word " * 100}]}, "limit is 64"),
    ({"instances": [{"prompt": "x"}] * 9}, "limit is 8"),
]


@pytest.mark.parametrize("body,message", BAD_V1, ids=[m for _, m in BAD_V1])
def test_v1_bad_requests_are_400_with_a_message(server, body, message):
    r = requests.post(server.url(f"/v1/models/{server.name}:predict"), json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_malformed_json_and_wrong_model(server):
    r = requests.post(server.url(f"/v1/models/{server.name}:predict"), data=b'{"instances": [', timeout=10,
                      headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    r = v1(server.__class__(server.proc, server.base, "nope", server.log_path), [{"prompt": "hi"}])
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = requests.post(server.url("/openai/v1/completions"), data=b"{nope", timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = requests.post(server.url("/openai/v1/completions"), json={"model": "nope", "prompt": "hi"}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = requests.post(server.url("/v2/models/nope/infer"), timeout=10, json={
        "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]})
    assert r.status_code == 404


@pytest.mark.parametrize("body,message", [
    ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}, "named 'prompt'"),
    ({"inputs": [{"name": "prompt", "shape": [1], "datatype": "INT64", "data": [1]}]}, "BYTES"),
    ({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],
      "parameters": {"max_new_tokens": 99}}, "between 1 and 24"),
    ({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],
      "parameters": {"top_k": 3}}, "unknown field 'top_k'"),
    ({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": [""]}]}, "non-empty"),
])
def test_v2_bad_requests(server, body, message):
    r = requests.post(server.url(f"/v2/models/{server.name}/infer"), json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


@pytest.mark.parametrize("body,message", [
    ({"prompt": "hi"}, "model is required"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 1000}, "between 0 and 24"),
    ({"model": "tiny", "prompt": "hi", "logprobs": 6}, "at most 5 alternatives"),
    ({"model": "tiny", "prompt": "hi", "best_of": 3}, "best_of"),
    ({"model": "tiny", "prompt": ["a"] * 3, "n": 3}, "limit is 8"),
    ({"model": "tiny", "prompt": "hi", "temperature": "0.5"}, "temperature"),
    ({"model": "tiny", "prompt": "hi", "seed": 2 ** 64}, "seed"),
    ({"model": "tiny", "prompt": "hi", "presence_penalty": 3}, "presence_penalty"),
    ({"model": "tiny", "prompt": "hi", "logit_bias": {"5": 1}}, "logit_bias"),
    ({"model": "tiny", "prompt": "hi", "stop": ["x"] * 5}, "5 stop strings"),
    ({"model": "tiny", "prompt": "x" * 20000}, "bytes"),
    ({"model": "tiny", "prompt": ""}, "non-empty"),
    ({"model": "tiny", "prompt": ["a", 7], "stream": True}, "prompt"),
])
def test_openai_bad_requests(server, body, message):
    r = requests.post(server.url("/openai/v1/completions"), json=body, timeout=10)
    assert r.status_code in (400, 413), r.text
    assert message in r.json()["error"]["message"]


def test_still_serving_after_bad_requests_and_one_log_line_per_request(server):
    marker = "/v1/models/%s:predict" % server.name
    before = server.log().count(marker)
    assert v1(server, [{"prompt": ""}]).status_code == 400
    assert v1(server, [{"prompt": "Hello", "max_new_tokens": 2}]).status_code == 200
    lines = [l for l in server.log().splitlines() if marker in l]
    assert len(lines) - before == 2  # exactly one line per request, errors included
    assert re.search(r"POST /v1/models/\S+:predict 400 [\d.]+ ms$", lines[-2])
    assert re.search(r"POST /v1/models/\S+:predict 200 [\d.]+ ms$", lines[-1])


def _batch_histogram(server) -> tuple[float, float]:
    """(batches of size 1, all batches) from the server's Prometheus metrics."""
    text = requests.get(server.url("/metrics"), timeout=10).text
    ones = float(re.search(r'^lmops_batch_size_bucket\{le="1\.0"\} (\S+)$', text, re.M).group(1))
    total = float(re.search(r"^lmops_batch_size_count (\S+)$", text, re.M).group(1))
    return ones, total


def test_concurrent_requests_are_batched(server):
    ones0, total0 = _batch_histogram(server)
    n_clients, per_client = 8, 3
    errors: list[str] = []

    def client(i: int) -> None:
        with requests.Session() as s:
            for j in range(per_client):
                r = s.post(server.url(f"/v1/models/{server.name}:predict"), timeout=60,
                           json={"instances": [{"prompt": f"client {i} request {j}", "max_new_tokens": 16}]})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    ones, total = _batch_histogram(server)
    batches, singles = total - total0, ones - ones0
    requests_done = n_clients * per_client
    # every request ran in some batch; fewer batches than requests means they shared forward passes
    assert batches < requests_done, (batches, requests_done)
    assert batches - singles >= 1  # at least one batch held more than one request
