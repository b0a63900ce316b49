"""Quality probe arithmetic on the completions answer shape (vLLM's and lmops serve's); scoring against a
real server is in tests/serve/test_serve_quality_probe.py."""

from __future__ import annotations

import math

import pytest

from lmops.observe.quality import ProbeError, _nll_bits, probe_texts, split_texts


def answer(tokens, logprobs):
    return {"choices": [{"text": "".join(tokens), "logprobs": {"tokens": tokens, "token_logprobs": logprobs,
                                                               "top_logprobs": None, "text_offset": []}}]}


def test_bits_over_the_bytes_the_scored_tokens_cover():
    bits, n = _nll_bits("u", "hello world", answer(["hello", " wor", "ld"], [None, -math.log(2), -2 * math.log(2)]))
    assert bits == pytest.approx(3.0) and n == len(" world")


@pytest.mark.parametrize("bad", [{"choices": []}, {"choices": [{"logprobs": None}]},
                                 answer(["a", "b"], [None, None]), answer(["a", "b"], [None, float("nan")]),
                                 answer(["a", "b"], [None])])
def test_unusable_answers_are_probe_errors(bad):
    with pytest.raises(ProbeError):
        _nll_bits("http://canary", "ab", bad)


def test_probe_sources():
    assert probe_texts(["a"]) == ["a"]
    assert probe_texts(config_map={"probe.txt": "one\n\ntwo\n"}) == ["one", "two"]
    assert split_texts("def f():\n  pass\n---\nclass A:\n  x = 1\n") == ["def f():\n  pass", "class A:\n  x = 1"]
    with pytest.raises(ProbeError, match="no key 'probe.txt'"):
        probe_texts(config_map={"other": "x"})


def test_probe_texts_from_s3(s3):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="probe/set.txt", Body=b"alpha beta\ngamma delta\n")
    assert probe_texts(uri=f"s3://{bucket}/probe/set.txt") == ["alpha beta", "gamma delta"]
