"""int8: reload from the stored int8 weights alone gives the logits of the freshly quantized model; the
weights shrink; evaluate and the serving loader read the directory; broken directories fail clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmops.compress import CompressError
from lmops.compress.quantize import (MARKER, WEIGHTS, linear_weight_bytes, load_quantized, quantize_dir,
                                     quantize_model, save_quantized)
from lmops.config import EvaluateConfig, Int8Config
from lmops.model import count_params

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def int8_pair(tiny_model_dir, tmp_path_factory):
    """(logits right after quantizing, int8 dir whose fp32 source has been deleted, input ids, fp32 logits)."""
    root = tmp_path_factory.mktemp("int8")
    src = shutil.copytree(tiny_model_dir, root / "fp32")
    fp32 = AutoModelForCausalLM.from_pretrained(src).eval()
    q = quantize_model(fp32, Int8Config())
    save_quantized(q, root / "int8", src, Int8Config())
    x = torch.randint(0, fp32.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fresh, reference = q(input_ids=x).logits, fp32(input_ids=x).logits
    shutil.rmtree(src)  # nothing fp32 left to re-quantize from
    return fresh, root / "int8", x, reference


def test_reload_without_fp32_weights_gives_the_same_logits(int8_pair):
    fresh, int8_dir, x, reference = int8_pair
    assert not any(p.name == "model.safetensors" for p in int8_dir.iterdir())
    reloaded = load_quantized(int8_dir)
    with torch.no_grad():
        again = reloaded(input_ids=x).logits
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    # and it is a real quantization: close to fp32 but not identical
    diff = (fresh - reference).abs().max().item()
    assert 0 < diff < 0.5, diff
    # the int8 layers' weights are still parameters of the model, counted once each
    assert count_params(reloaded) == count_params(AutoModelForCausalLM.from_config(reloaded.config))
    out = reloaded.generate(x[:1, :8], max_new_tokens=6, min_new_tokens=6, do_sample=False,
                            pad_token_id=reloaded.config.pad_token_id)
    assert out.shape == (1, 14)


def test_int8_linear_weights_are_much_smaller(tiny_model_dir, tmp_path):
    info = quantize_dir(tiny_model_dir, tmp_path / "int8", Int8Config())
    assert info["linear_weight_ratio"] < 0.30, info
    fp32_file = (tiny_model_dir / "model.safetensors").stat().st_size
    assert (tmp_path / "int8" / WEIGHTS).stat().st_size < 0.6 * fp32_file
    marker = json.loads((tmp_path / "int8" / MARKER).read_text())
    assert marker["scheme"] == "int8" and len(marker["modules"]) == info["quantized_layers"] > 0
    # without the LM head fewer layers are quantized; the tied fp32 head is re-tied on load
    quantize_dir(tiny_model_dir, tmp_path / "nohead", Int8Config(include_lm_head=False))
    m = load_quantized(tmp_path / "nohead")
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert linear_weight_bytes(m, include_lm_head=False) < linear_weight_bytes(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), include_lm_head=False) * 0.3


def test_evaluate_and_serving_load_the_int8_dir(int8_pair, tiny_tokens):
    from lmops.evaluate.metrics import evaluate_model
    from lmops.serve.loader import load_model_dir

    _, int8_dir, _, _ = int8_pair
    metrics = evaluate_model(int8_dir, tiny_tokens, EvaluateConfig(block_size=64, max_blocks=8, latency_new_tokens=3,
                                                                   latency_repeats=1))
    assert 1 < metrics["perplexity"] < 512 and metrics["device"] == "cpu"
    assert metrics["size_bytes"] == (int8_dir / WEIGHTS).stat().st_size
    loaded = load_model_dir(int8_dir)
    assert loaded.variant == "int8"
    ids = loaded.tokenizer("def main():", return_tensors="pt")
    out = loaded.model.generate(**ids, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5


def test_plain_from_pretrained_refuses_the_int8_dir(int8_pair):
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(int8_pair[1])


def test_broken_int8_dirs_fail_with_the_path(int8_pair, tmp_path):
    bad = shutil.copytree(int8_pair[1], tmp_path / "missing")
    (bad / WEIGHTS).unlink()
    with pytest.raises(CompressError, match=f"{WEIGHTS}.*missing"):
        load_quantized(bad)
    bad = shutil.copytree(int8_pair[1], tmp_path / "badmarker")
    (bad / MARKER).write_text("{not json")
    with pytest.raises(CompressError, match="quantization.json: not valid JSON"):
        load_quantized(bad)
    bad = shutil.copytree(int8_pair[1], tmp_path / "truncated")
    (bad / WEIGHTS).write_bytes((bad / WEIGHTS).read_bytes()[:1000])
    with pytest.raises(CompressError, match="unreadable int8 model"):
        load_quantized(bad)
