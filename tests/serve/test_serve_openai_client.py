"""The official `openai` client against `lmops serve`: completions, chat (streamed too), models,
logprobs, and prompt scoring whose bits per byte match the model's own loss."""

from __future__ import annotations

import math

import pytest

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module", params=["/v1", "/openai/v1"])
def client(server, request):
    return openai.OpenAI(base_url=server.url(request.param), api_key="unused", max_retries=0, timeout=60)


def test_models_list_and_retrieve(client, server):
    assert [m.id for m in client.models.list()] == [server.name]
    assert client.models.retrieve(server.name).id == server.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_completions_with_n_stop_seed_penalties_and_usage(client, server):
    r = client.completions.create(model=server.name, prompt=["Hello", "The fox"], max_tokens=5, n=2, seed=3,
                                  temperature=0.8, presence_penalty=0, frequency_penalty=0.5, stop=["\n\n"])
    assert len(r.choices) == 4 and [c.index for c in r.choices] == [0, 1, 2, 3]
    assert 0 < r.usage.completion_tokens <= 4 * 5  # a stop string may end a choice early
    again = client.completions.create(model=server.name, prompt=["Hello", "The fox"], max_tokens=5, n=2, seed=3,
                                      temperature=0.8, frequency_penalty=0.5, stop=["\n\n"])
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # seeded: reproducible


def test_completion_logprobs_top_k(client, server):
    r = client.completions.create(model=server.name, prompt="Serving a", max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and token in top and 3 <= len(top) <= 4
        assert logprob == pytest.approx(max(top.values()))  # greedy picks the most likely token
    assert "".join(lp.tokens) == r.choices[0].text


def test_echo_with_max_tokens_0_scores_the_prompt(client, server):
    text = "KServe speaks the v1 and v2 inference protocols."
    r = client.completions.create(model=server.name, prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice = r.choices[0]
    assert choice.text == text and r.usage.completion_tokens == 0
    lp = choice.logprobs.token_logprobs
    assert lp[0] is None and all(x is not None and x <= 0 for x in lp[1:])
    assert "".join(choice.logprobs.tokens) == text and len(lp) == r.usage.prompt_tokens


def test_bits_per_byte_through_the_api_equals_the_models_own_loss(client, server, tiny_dir):
    """bits/byte = sum of -log p(token) over the scored tokens / ln 2 / UTF-8 bytes of the text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "The quick brown fox jumps over the lazy dog. Serving a language model means batching requests."
    r = client.completions.create(model=server.name, prompt=text, max_tokens=0, echo=True, logprobs=0, temperature=0)
    api_nats = -sum(r.choices[0].logprobs.token_logprobs[1:])
    api_bpb = api_nats / math.log(2) / len(text.encode("utf-8"))

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()  # mean over the len-1 predicted tokens
    ref_bpb = loss * (ids.shape[1] - 1) / math.log(2) / len(text.encode("utf-8"))
    assert api_bpb == pytest.approx(ref_bpb, rel=1e-4)


def test_chat_completion_and_streamed_chat(client, server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
    r = client.chat.completions.create(model=server.name, messages=messages, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=2)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert len(choice.logprobs.content) == 6 and all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert r.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model=server.name, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].choices == []


def test_streamed_completion(client, server):
    full = client.completions.create(model=server.name, prompt="Serving a", max_tokens=8, temperature=0).choices[0].text
    pieces = [c.choices[0].text for c in client.completions.create(model=server.name, prompt="Serving a", max_tokens=8,
                                                                   temperature=0, stream=True)]
    assert "".join(pieces) == full


def test_client_errors_arrive_as_openai_errors(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.name, prompt="hi", max_tokens=10_000)
    assert "max_tokens" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_the_tokenize_stage_saves_a_chat_template(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer

    from lmops.config import TokenizeConfig
    from lmops.data.tokenizer import save_trained

    cfg = TokenizeConfig()
    tok = Tokenizer(models.BPE())
    tok.add_special_tokens([cfg.eos_token, cfg.pad_token])
    save_trained(tok, cfg, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    prompt = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == f"user\nhi{cfg.eos_token}\nassistant\n"
