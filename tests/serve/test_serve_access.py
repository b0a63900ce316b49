"""API keys, rate limits and the admission queue on a real `lmops serve`, over every protocol: the openai
client, KServe v1 and v2 over REST (requests) and v2 over gRPC (kserve's client)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import requests

from conftest import ENV_KEY, FILE_KEYS, QUEUE, RPM, bearer

openai = pytest.importorskip("openai")

def v1(srv, **kw):
    return requests.post(srv.url(f"/v1/models/{srv.name}:predict"), json={"instances": [{"prompt": "Hello"}]},
                         timeout=60, **kw)


def v2(srv, **kw):
    return requests.post(srv.url(f"/v2/models/{srv.name}/infer"), timeout=60, json={
        "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["Hello"]}]}, **kw)


def test_probes_and_metrics_need_no_key(guarded):
    for path in (f"/v1/models/{guarded.name}", "/v2/health/ready", "/v2/health/live",
                 f"/v2/models/{guarded.name}/ready", "/metrics"):
        assert requests.get(guarded.url(path), timeout=10).status_code == 200, path


def test_every_rest_inference_route_needs_the_key_and_answers_its_protocols_401(guarded):
    for wrong in ({}, bearer("sk-wrong"), bearer(FILE_KEYS[0][:-1]), {"Authorization": FILE_KEYS[0]}):
        r = v1(guarded, headers=wrong)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert isinstance(r.json()["error"], str) and "API key" in r.json()["error"]  # KServe's shape
        assert v2(guarded, headers=wrong).status_code == 401
        r = requests.post(guarded.url("/v1/completions"), json={"model": guarded.name, "prompt": "Hi"}, headers=wrong,
                          timeout=10)
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"  # OpenAI's shape
        assert requests.get(guarded.url(f"/v2/models/{guarded.name}"), headers=wrong, timeout=10).status_code == 401
    assert v1(guarded, headers=bearer(FILE_KEYS[0])).status_code == 200
    assert v2(guarded, headers=bearer(ENV_KEY)).status_code == 200  # $LMOPS_API_KEYS adds keys


def test_openai_client_with_and_without_api_key(guarded):
    for base in ("/v1", "/openai/v1"):
        ok = openai.OpenAI(base_url=guarded.url(base), api_key=FILE_KEYS[0], max_retries=0, timeout=60)
        assert [m.id for m in ok.models.list()] == [guarded.name]
        r = ok.completions.create(model=guarded.name, prompt="Hello", max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3
        anon = openai.OpenAI(base_url=guarded.url(base), api_key="not-a-key", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError):
            anon.completions.create(model=guarded.name, prompt="Hello", max_tokens=3)
        with pytest.raises(openai.AuthenticationError):
            anon.models.list()


def test_grpc_needs_the_key_in_metadata_and_readiness_stays_open(guarded):
    from lmops.serve import _kserve  # noqa: F401
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    def request():
        inp = pb.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1],
                                                    contents=pb.InferTensorContents(bytes_contents=[b"Hello"]))
        return pb.ModelInferRequest(model_name=guarded.name, inputs=[inp])

    async def call():
        async with grpc.aio.insecure_channel(guarded.grpc) as channel:
            stub = GRPCInferenceServiceStub(channel)
            ready = await stub.ModelReady(pb.ModelReadyRequest(name=guarded.name))
            codes = []
            for md in ((), (("authorization", "Bearer sk-wrong"),)):
                for rpc in (stub.ModelInfer(request(), metadata=md),
                            stub.ModelMetadata(pb.ModelMetadataRequest(name=guarded.name), metadata=md)):
                    try:
                        await rpc
                        codes.append("OK")
                    except grpc.aio.AioRpcError as e:
                        codes.append(e.code().name)
            ok = await stub.ModelInfer(request(), metadata=(("authorization", f"Bearer {FILE_KEYS[0]}"),))
            return ready, codes, ok

    ready, codes, ok = asyncio.run(call())
    assert ready.ready and codes == ["UNAUTHENTICATED"] * 4
    assert ok.outputs[0].name == "text"


def burst(srv, key: str, n: int, max_tokens: int = 48) -> list[tuple[int, float, dict]]:
    """``n`` OpenAI completions released at once from ``n`` threads: (status, seconds, headers) each."""
    gate, out = threading.Barrier(n), [None] * n

    def one(i):
        with requests.Session() as s:
            gate.wait()
            t0 = time.perf_counter()
            r = s.post(srv.url("/v1/completions"), headers=bearer(key), timeout=120,
                       json={"model": srv.name, "prompt": "The quick brown fox", "max_tokens": max_tokens,
                             "temperature": 0.5})  # sampled: the response cache must not answer
            out[i] = (r.status_code, time.perf_counter() - t0, dict(r.headers))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def test_burst_at_4x_capacity_refuses_exactly_the_excess_and_keeps_the_admitted_fast(guarded):
    unloaded = burst(guarded, FILE_KEYS[1], RPM)  # the capacity: one minute's worth, at once
    assert [s for s, _, _ in unloaded] == [200] * RPM
    offered = burst(guarded, FILE_KEYS[2], 4 * RPM)
    admitted = [t for s, t, _ in offered if s == 200]
    refused = [h for s, _, h in offered if s == 429]
    assert len(admitted) == RPM and len(refused) == 3 * RPM, sorted(s for s, _, _ in offered)
    assert all(int(h["retry-after"]) >= 1 for h in refused)
    assert p95(admitted) <= 2 * p95([t for _, t, _ in unloaded]), (admitted, unloaded)
    metrics = requests.get(guarded.url("/metrics"), timeout=10).text
    assert 'lmops_rejected_requests_total{reason="rate_limited"}' in metrics


def test_past_the_admission_queue_503_with_retry_after_at_once(guarded):
    """Two keys' worth (16) of long generations at once against a queue of 8: some wait their turn (200),
    the rest are refused at once (503), never queued without bound."""
    results = []

    def run(key):
        results.extend(burst(guarded, key, RPM, max_tokens=180))

    threads = [threading.Thread(target=run, args=(k,)) for k in (FILE_KEYS[3], ENV_KEY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [t for s, t, _ in results if s == 200]
    shed = [(t, h) for s, t, h in results if s == 503]
    assert len(ok) + len(shed) == 2 * RPM and len(ok) >= QUEUE // 2 and shed, sorted(s for s, _, _ in results)
    assert all(h["retry-after"] == "1" for _, h in shed)
    assert max(t for t, _ in shed) < min(ok), "a shed request waited for generation"


def test_the_operators_quality_probe_sends_the_key(guarded):
    from lmops.observe.quality import ProbeError, bits_per_byte

    texts = ["The quick brown fox jumps over the lazy dog."]
    assert bits_per_byte(guarded.base, guarded.name, texts, api_key=FILE_KEYS[0]) > 0
    with pytest.raises(ProbeError, match="401"):
        bits_per_byte(guarded.base, guarded.name, texts)
