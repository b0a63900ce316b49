"""Property: no generated body gets a 5xx from any route of the three protocols, and the server is
healthy afterwards. Bodies are near misses of valid requests (every known field, each either a valid
value or any JSON value, NaN and infinities included) plus arbitrary JSON."""

from __future__ import annotations

import json

import pytest
import requests

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TEXT = st.text(min_size=0, max_size=40)
PROMPT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
NUMBER = st.integers(min_value=-1, max_value=30) | st.floats(min_value=-0.5, max_value=2.5)


def maybe(valid) -> st.SearchStrategy:
    return st.one_of(valid, JSON)


def body(required: dict, optional: dict) -> st.SearchStrategy:
    # well-typed (values may still be out of range), near misses (any field may be any JSON), anything
    typed = st.fixed_dictionaries(required, optional=optional)
    near_miss = st.fixed_dictionaries({k: maybe(v) for k, v in required.items()},
                                      optional={k: maybe(v) for k, v in optional.items()})
    return st.one_of(typed, near_miss, JSON)


SAMPLING = {"temperature": NUMBER, "top_p": NUMBER, "seed": st.integers(), "stop": st.lists(TEXT, max_size=6)}
GEN = body({"prompt": PROMPT}, {"max_new_tokens": NUMBER, **SAMPLING})
OPENAI_COMMON = {"max_tokens": NUMBER, "n": st.integers(-1, 4), "stream": st.booleans(),
                 "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
                 "presence_penalty": NUMBER, "frequency_penalty": NUMBER, "logit_bias": JSON, "user": TEXT,
                 **SAMPLING}
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                 "content": maybe(TEXT)})

ROUTES = {
    "v1": ("POST", "/v1/models/tiny:predict", body({"instances": st.lists(GEN, min_size=1, max_size=3)}, {})),
    "v2": ("POST", "/v2/models/tiny/infer", body(
        {"inputs": st.lists(body({"name": st.just("prompt"), "shape": st.lists(st.integers(-1, 3), max_size=2),
                                  "datatype": st.sampled_from(["BYTES", "INT64", "FP32"]),
                                  "data": st.lists(TEXT | NUMBER, max_size=3)}, {}), max_size=2)},
        {"parameters": body({}, {"max_new_tokens": NUMBER, **SAMPLING}), "id": TEXT})),
    "completions": ("POST", "/v1/completions", body(
        {"model": st.just("tiny"), "prompt": PROMPT | st.lists(PROMPT, max_size=3)},
        {"echo": st.booleans(), "logprobs": st.integers(-1, 7), "best_of": st.integers(0, 3), **OPENAI_COMMON})),
    "openai-prefixed completions": ("POST", "/openai/v1/completions", body(
        {"model": st.just("tiny"), "prompt": PROMPT}, {"echo": st.booleans(), **OPENAI_COMMON})),
    "chat": ("POST", "/v1/chat/completions", body(
        {"model": st.just("tiny"), "messages": st.lists(MESSAGE, max_size=3)},
        {"logprobs": st.booleans(), "top_logprobs": st.integers(-1, 7), "max_completion_tokens": NUMBER,
         **OPENAI_COMMON})),
    "models": ("GET", "/v1/models/{text}", st.text(alphabet="abcdefghijklmnopqrstuvwxyz-:._", max_size=12)),
    "v2 metadata": ("GET", "/v2/models/{text}", st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", max_size=12)),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_no_generated_body_gets_a_5xx(server, route):
    method, path, strategy = ROUTES[route]
    session = requests.Session()
    statuses: list[int] = []

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(value):
        if method == "GET":
            r = session.get(server.url(path.format(text=value)), timeout=30)
        else:  # json.dumps writes NaN/Infinity as Python does: the server must refuse them, not crash
            r = session.post(server.url(path), data=json.dumps(value), timeout=30,
                             headers={"content-type": "application/json"})
        statuses.append(r.status_code)
        assert r.status_code < 500, (r.status_code, r.text[:500], value)

    check()
    assert 400 in statuses or 404 in statuses or 422 in statuses  # bodies the validation refuses
    assert 200 in statuses  # and bodies that got through to the model
    assert requests.get(server.url("/v1/models/tiny"), timeout=10).status_code == 200
    r = requests.post(server.url("/v1/completions"), json={"model": "tiny", "prompt": "still", "max_tokens": 2},
                      timeout=30)
    assert r.status_code == 200
    assert "Traceback" not in server.log()
