"""Batched generation and request limits, in process (no server)."""

from __future__ import annotations

import pytest

from lmops.config import ServeConfig
from lmops.serve.generate import GenRequest, generate_batch
from lmops.serve.loader import load_model_dir
from lmops.serve.params import BadRequest, GenParams, parse_params, to_gen_request


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return load_model_dir(tiny_dir)


def test_batched_greedy_equals_one_at_a_time(lm):
    tok = lm.tokenizer
    reqs = [GenRequest(tok.encode(p), n) for p, n in
            [("Hello", 7), ("The quick brown fox jumps over", 12), ("K", 3), ("def add(a, b):", 9)]]
    batched = generate_batch(lm.model, tok, reqs)
    for r, b in zip(reqs, batched):
        alone = generate_batch(lm.model, tok, [r])[0]
        assert b.token_ids == alone.token_ids and len(b.token_ids) == r.max_new_tokens


def test_seeded_sampling_does_not_depend_on_batch_mates(lm):
    tok = lm.tokenizer
    seeded = GenRequest(tok.encode("Hello"), 10, temperature=1.0, top_p=0.9, seed=3)
    alone = generate_batch(lm.model, tok, [seeded])[0].token_ids
    other = GenRequest(tok.encode("other prompt here"), 10, temperature=1.0)
    assert generate_batch(lm.model, tok, [other, seeded])[1].token_ids == alone


def test_stop_string_cuts_text(lm):
    tok = lm.tokenizer
    full = generate_batch(lm.model, tok, [GenRequest(tok.encode("Hello"), 12)])[0]
    stop = full.text[3:5]
    cut = generate_batch(lm.model, tok, [GenRequest(tok.encode("Hello"), 12, stop=[stop])])[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_limits(lm):
    cfg = ServeConfig(max_new_tokens=10, default_max_new_tokens=4, max_prompt_tokens=5)
    ok = to_gen_request(GenParams(prompt="Hello"), lm.tokenizer, cfg, 256, "x")
    assert ok.max_new_tokens == 4
    with pytest.raises(BadRequest, match="between 1 and 10"):
        to_gen_request(GenParams(prompt="Hello", max_new_tokens=11), lm.tokenizer, cfg, 256, "x")
    with pytest.raises(BadRequest, match="limit is 5"):
        to_gen_request(GenParams(prompt="one two three four five six"), lm.tokenizer, cfg, 256, "x")
    with pytest.raises(BadRequest, match="positions"):
        to_gen_request(GenParams(prompt="Hello", max_new_tokens=10), lm.tokenizer, cfg, 8, "x")
    with pytest.raises(BadRequest, match="unknown field 'foo'"):
        parse_params({"prompt": "hi", "foo": 1}, "x")
    with pytest.raises(BadRequest, match="non-empty string"):
        parse_params({"prompt": None}, "x")
