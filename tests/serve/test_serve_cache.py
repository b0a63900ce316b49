"""HTTP caching on a real server: strong ETags on deterministic answers, 304 on If-None-Match without
generating, the LRU answering repeats, no-store on sampled answers, ETags on model listings and v2
metadata, and a new model version changing every ETag."""

from __future__ import annotations

import requests

from conftest import FILE_KEYS, bearer


def counters(srv) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(srv.url("/metrics"), timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def generated(srv) -> float:
    return counters(srv).get("lmops_generated_tokens_total", 0.0)


def test_deterministic_answers_carry_a_strong_etag_and_304_skips_generation(server):
    body = {"model": server.name, "prompt": "ETag me", "max_tokens": 5, "temperature": 0}
    first = requests.post(server.url("/v1/completions"), json=body, timeout=60)
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag.startswith('"') and not tag.startswith("W/")
    before, hits = generated(server), counters(server)["lmops_response_cache_hits_total"]
    # the same request by the other path, keys in another order: the same canonical request
    again = requests.post(server.url("/openai/v1/completions"), json=dict(reversed(list(body.items()))),
                          headers={"If-None-Match": tag}, timeout=60)
    assert again.status_code == 304 and again.headers["etag"] == tag and again.content == b""
    repeat = requests.post(server.url("/v1/completions"), json=body, timeout=60)
    assert repeat.status_code == 200 and repeat.headers["x-lmops-cache"] == "hit" and repeat.json() == first.json()
    assert generated(server) == before  # neither the 304 nor the hit ran the model
    assert counters(server)["lmops_response_cache_hits_total"] == hits + 2
    other = requests.post(server.url("/v1/completions"), json={**body, "max_tokens": 4}, headers={"If-None-Match": tag},
                          timeout=60)
    assert other.status_code == 200 and other.headers["etag"] != tag and generated(server) == before + 4
    fresh = requests.post(server.url("/v1/completions"), json=body, headers={"Cache-Control": "no-cache"}, timeout=60)
    assert "x-lmops-cache" not in fresh.headers and fresh.headers["etag"] == tag and generated(server) == before + 9
    assert fresh.json()["choices"] == first.json()["choices"]  # greedy: the same answer, generated again


def test_seeded_and_kserve_requests_are_cached_sampled_ones_are_not(server):
    seeded = {"model": server.name, "prompt": "Seeded", "max_tokens": 3, "temperature": 0.9, "seed": 7}
    assert "etag" in requests.post(server.url("/v1/completions"), json=seeded, timeout=60).headers
    sampled = requests.post(server.url("/v1/completions"), json={**seeded, "seed": None}, timeout=60)
    assert sampled.status_code == 200 and "etag" not in sampled.headers
    assert sampled.headers["cache-control"] == "no-store"
    v1 = {"instances": [{"prompt": "Hello v1", "max_new_tokens": 3}]}
    r = requests.post(server.url(f"/v1/models/{server.name}:predict"), json=v1, timeout=60)
    assert requests.post(server.url(f"/v1/models/{server.name}:predict"), json=v1, timeout=60,
                         headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    v2 = {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["Hello v2"]}],
          "parameters": {"max_new_tokens": 3}}
    r = requests.post(server.url(f"/v2/models/{server.name}/infer"), json=v2, timeout=60)
    assert requests.post(server.url(f"/v2/models/{server.name}/infer"), json=v2, timeout=60,
                         headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    stream = requests.post(server.url("/v1/completions"), json={**seeded, "stream": True}, timeout=60)
    assert stream.headers["cache-control"] == "no-store" and "etag" not in stream.headers
    bad = requests.post(server.url("/v1/completions"), json={**seeded, "max_tokens": 10_000}, timeout=60)
    assert bad.status_code == 400 and "etag" not in bad.headers  # errors are never validated or stored


def test_model_list_and_v2_metadata_have_etags(server):
    for path in ("/v1/models", "/openai/v1/models", f"/v2/models/{server.name}"):
        r = requests.get(server.url(path), timeout=10)
        assert r.status_code == 200 and r.headers["etag"], path
        again = requests.get(server.url(path), headers={"If-None-Match": r.headers["etag"]}, timeout=10)
        assert again.status_code == 304, path


def test_lru_is_bounded_and_a_new_model_version_changes_the_etags(server, guarded):
    """``guarded`` serves another model under the same name, with a cache of CACHE answers."""
    auth = bearer(FILE_KEYS[4])
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 2, "temperature": 0}
    tag = requests.post(guarded.url("/v1/completions"), json=body, headers=auth, timeout=60).headers["etag"]
    for prompt in ("one", "two"):  # two more entries push the first out of a cache of 2
        requests.post(guarded.url("/v1/completions"), json={**body, "prompt": prompt}, headers=auth, timeout=60)
    r = requests.post(guarded.url("/v1/completions"), json=body, headers=auth, timeout=60)
    assert "x-lmops-cache" not in r.headers and r.headers["etag"] == tag
    r = requests.post(guarded.url("/v1/completions"), json=body, headers=auth, timeout=60)
    assert r.headers["x-lmops-cache"] == "hit"
    # the same request to another version of the model: another ETag, so a client's 304 cannot be stale
    other = requests.post(server.url("/v1/completions"), json=body, headers={"If-None-Match": tag}, timeout=60)
    assert other.status_code == 200 and other.headers["etag"] != tag
