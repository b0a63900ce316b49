"""The rest of the OpenAI surface evaluation tools use, through the official client: token-id prompts (one
list, a list of lists), echo of token ids, log-probs in streams, n > 1 and several prompts streamed; bits per
byte through token ids; and a lone surrogate in a prompt being a 400 on every protocol (gRPC's BYTES must
be UTF-8: tests/serve/test_serve_fuzz.py)."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import requests

openai = pytest.importorskip("openai")

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tok(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def test_token_id_prompts_answer_as_their_text(client, server, tok):
    ids = [tok.encode(t, add_special_tokens=False) for t in (TEXT, "Serving a")]
    by_text = client.completions.create(model=server.name, prompt=[TEXT, "Serving a"], max_tokens=4, temperature=0)
    one = client.completions.create(model=server.name, prompt=ids[0], max_tokens=4, temperature=0)
    many = client.completions.create(model=server.name, prompt=ids, max_tokens=4, temperature=0)
    assert one.choices[0].text == by_text.choices[0].text
    assert [c.text for c in many.choices] == [c.text for c in by_text.choices]
    assert many.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    echoed = client.completions.create(model=server.name, prompt=ids[0], max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text == TEXT + one.choices[0].text[:len(echoed.choices[0].text) - len(TEXT)]
    for bad, words in (([[5, 10**6]], "outside the vocabulary"), ([[]], "non-empty"), ([1, "a"], "prompt")):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=server.name, prompt=bad, max_tokens=2)
        assert words in e.value.message


def test_bits_per_byte_through_token_ids_equals_the_models_own(client, server, tok, tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    ids = tok.encode(TEXT, add_special_tokens=False)
    r = client.completions.create(model=server.name, prompt=ids, max_tokens=0, echo=True, logprobs=0, temperature=0)
    api_bpb = -sum(r.choices[0].logprobs.token_logprobs[1:]) / math.log(2) / len(TEXT.encode("utf-8"))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    t = torch.tensor([ids])
    with torch.no_grad():
        loss = model(input_ids=t, labels=t).loss.item()
    assert api_bpb == pytest.approx(loss * (len(ids) - 1) / math.log(2) / len(TEXT.encode("utf-8")), rel=1e-4)


def test_logprobs_in_streams_equal_the_unstreamed_ones(client, server):
    kw = dict(model=server.name, prompt="Serving a", max_tokens=6, temperature=0, logprobs=2)
    full = client.completions.create(**kw).choices[0].logprobs
    chunks = [c.choices[0] for c in client.completions.create(**kw, stream=True) if c.choices]
    tokens = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
    values = [v for c in chunks if c.logprobs for v in c.logprobs.token_logprobs]
    offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset]
    assert tokens == full.tokens and values == pytest.approx(full.token_logprobs, abs=1e-6)
    assert offsets == full.text_offset
    messages = [{"role": "user", "content": "Say something."}]
    chat = client.chat.completions.create(model=server.name, messages=messages, max_tokens=5, temperature=0,
                                          logprobs=True, top_logprobs=2)
    streamed = [t for c in client.chat.completions.create(model=server.name, messages=messages, max_tokens=5,
                                                          temperature=0, logprobs=True, top_logprobs=2, stream=True)
                if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in chat.choices[0].logprobs.content]
    assert all(len(t.top_logprobs) == 2 for t in streamed)


def test_n_and_several_prompts_stream_every_choice(client, server):
    kw = dict(model=server.name, prompt=["Hello", "The fox"], max_tokens=5, n=2, seed=11, temperature=0.9)
    full = client.completions.create(**kw)
    texts, finished = defaultdict(str), {}
    for c in client.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        for choice in c.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
        if c.usage:
            assert c.usage.completion_tokens == full.usage.completion_tokens
    assert dict(texts) == {c.index: c.text for c in full.choices} and sorted(finished) == [0, 1, 2, 3]
    chat = list(client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3, n=3, seed=5, temperature=1, stream=True))
    assert {ch.index for c in chat for ch in c.choices} == {0, 1, 2}


def test_a_lone_surrogate_is_a_400_on_every_protocol(server):
    # the escape must reach the server as JSON text: build the body by hand
    prompt = '"a\\ud800b"'
    cases = [("/v1/completions", '{"model": "tiny", "prompt": %s}' % prompt, "prompt"),
             ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": %s}]}' % prompt,
              "messages[0].content"),
             (f"/v1/models/{server.name}:predict", '{"instances": [{"prompt": %s}]}' % prompt, "instances[0]"),
             (f"/v2/models/{server.name}/infer",
              '{"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": [%s]}]}' % prompt, "prompt")]
    for path, body, where in cases:
        r = requests.post(server.url(path), data=body, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400, (path, r.status_code, r.text)
        error = r.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        # KServe's JSON parser (orjson) refuses v1/v2 bodies itself; ours names where the surrogate is
        assert "surrogate" in message and (where in message or not path.endswith("completions")), message
    assert "Traceback" not in server.log()
