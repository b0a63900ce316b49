"""The canary quality probe against a real `lmops serve`: bits per byte through /v1/completions (echo, logprobs,
max_tokens 0) equal the model's own loss over the same tokens, on both route prefixes."""

from __future__ import annotations

import math

import pytest

from lmops.observe.quality import ProbeError, bits_per_byte, score

TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n"]


def reference_bpb(model_dir, texts) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    bits = n_bytes = 0.0
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        bits += loss * (ids.shape[1] - 1) / math.log(2)
        n_bytes += len(text.encode()) - len(tok.decode(ids[0, :1]).encode())
    return bits / n_bytes


def test_probe_bits_per_byte_equal_the_models_own(server, tiny_dir):
    got = bits_per_byte(server.base, server.name, TEXTS)
    assert got == pytest.approx(reference_bpb(tiny_dir, TEXTS), rel=1e-4)
    assert bits_per_byte(server.base, server.name, TEXTS) == got, "deterministic"


def test_probe_errors_name_the_server(server):
    with pytest.raises(ProbeError, match="404"):
        score(server.base, "no-such-model", "hello world")
    with pytest.raises(ProbeError, match="cannot reach"):
        score("http://127.0.0.1:9", server.name, "hello world", timeout=2)
