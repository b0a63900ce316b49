"""Readiness means a warm-up generation succeeded; a model that cannot load never serves."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path


from lmops.config import ServeConfig
from lmops.serve.model import LmopsModel

REPO = Path(__file__).resolve().parents[2]


def _model(uri, **cfg) -> LmopsModel:
    return LmopsModel("tiny", str(uri), ServeConfig(device="cpu", **cfg))


def test_ready_after_warm_up(tiny_dir):
    m = _model(tiny_dir)
    assert m.ready is False
    assert m.load() is True and m.ready is True and m.loaded.variant == "fp32"


def test_missing_directory_is_not_ready(tmp_path, caplog):
    m = _model(tmp_path / "nowhere")
    with caplog.at_level(logging.ERROR, logger="lmops.serve"):
        assert m.load() is False
    assert m.ready is False and "model directory not found" in m.load_error
    assert "not ready" in caplog.text and "nowhere" in caplog.text


def test_corrupt_weights_are_not_ready(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    m = _model(broken)
    assert m.load() is False and m.ready is False
    assert "cannot load" in m.load_error


def test_failed_warm_up_is_not_ready(tmp_path):
    """Weights and tokenizer load, but the tokenizer's ids overflow the model's embedding: only the
    warm-up generation finds out, and it must keep the model not ready."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_model import make_tokenizer

    d = tmp_path / "mismatched"
    make_tokenizer(d)
    cfg = LlamaConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    m = _model(d)
    assert m.load() is False and m.ready is False
    assert "IndexError" in m.load_error or "index" in m.load_error.lower()


def test_serve_exits_nonzero_on_a_broken_model_dir(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "lmops.cli", "serve", "--model", str(tmp_path), "--port", "0"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not starting the server" in proc.stderr and str(tmp_path) in proc.stderr


def test_serve_without_a_model_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "lmops.cli", "serve"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 2 and "--model" in proc.stderr


def test_loads_from_s3(s3, tiny_dir, tmp_path):
    from lmops import storage

    client, bucket = s3
    storage.upload_dir(tiny_dir, f"s3://{bucket}/models/tiny")
    m = LmopsModel("tiny", f"s3://{bucket}/models/tiny", ServeConfig(device="cpu", cache_dir=str(tmp_path / "cache")))
    assert m.load() is True, m.load_error
    assert m.loaded.path.is_relative_to(tmp_path / "cache")


def test_quantized_marker_routes_to_the_compress_loader(tiny_dir, tmp_path):
    """A directory with quantization.json is the compress stage's format: loaded by its loader, never
    silently as fp32 — so a marker over plain fp32 weights is a clear not-ready error."""
    d = tmp_path / "int8"
    shutil.copytree(tiny_dir, d)
    (d / "quantization.json").write_text('{"scheme": "int8-dynamic"}')
    m = _model(d)
    assert m.load() is False
    assert m.load_error and str(d) in m.load_error
