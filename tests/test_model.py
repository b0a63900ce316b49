"""Model construction: presets, sizes, special ids, pretrained directories and their vocabulary check."""

from __future__ import annotations

import pytest
import torch

from lmops import storage
from lmops.config import ModelConfig, load_config
from lmops.model import (ModelConfigError, Vocab, build_model, count_params, resolve_sizes, save_model_dir)

torch.set_num_threads(1)


def test_tiny_and_small_presets_build_with_expected_sizes():
    tiny = build_model(ModelConfig(preset="tiny"), Vocab(512, 0, 1))
    assert tiny.config.num_hidden_layers == 2 and tiny.config.hidden_size == 64
    assert tiny.config._attn_implementation == "sdpa"
    assert 50_000 < count_params(tiny) < 500_000
    small = build_model(ModelConfig(preset="small"), Vocab(8192, 0, 1))
    assert 10e6 <= count_params(small) <= 20e6


def test_gpt2_class_preset_on_meta_device():
    # meta: shapes without memory, so the 124M-class model is checked on any machine
    with torch.device("meta"):
        model = build_model(ModelConfig(preset="gpt2-124m"), Vocab(32768, 0, 1))
        gpt2_vocab = build_model(ModelConfig(preset="gpt2-124m"), Vocab(50257, 0, 1))
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.max_position_embeddings) == (12, 768, 12, 1024)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    # GPT-2 small's transformer body is 85M parameters; with its 50,257-token vocab 124M
    assert count_params(model, non_embedding=True) == pytest.approx(85e6, rel=0.01)
    assert count_params(model) == pytest.approx(110e6, rel=0.02)
    assert count_params(gpt2_vocab) == pytest.approx(124e6, rel=0.01)


def test_every_config_preset_builds_its_model_on_meta():
    for name in ("tiny", "small", "gpt2-124m"):
        cfg = load_config(name)
        with torch.device("meta"):
            model = build_model(cfg.model, Vocab(cfg.tokenize.vocab_size, 0, 1), block_size=cfg.train.block_size)
        assert model.config.vocab_size == cfg.tokenize.vocab_size


def test_preset_fills_only_unset_fields_and_custom_needs_all():
    sized = resolve_sizes(ModelConfig(preset="tiny", n_layer=3, d_ff=100))
    assert (sized.n_layer, sized.d_ff, sized.d_model, sized.n_kv_head) == (3, 100, 64, 4)
    with pytest.raises(ModelConfigError, match="model.n_layer"):
        resolve_sizes(ModelConfig(preset="custom", n_head=2, d_model=32))
    custom = build_model(ModelConfig(preset="custom", n_layer=1, n_head=2, n_kv_head=1, d_model=32, d_ff=64,
                                     max_seq_len=64), Vocab(100, 0, 1))
    assert custom.config.num_key_value_heads == 1
    with pytest.raises(ModelConfigError, match="divisible"):
        resolve_sizes(ModelConfig(preset="tiny", n_head=5))


def test_special_ids_and_positions_are_checked():
    model = build_model(ModelConfig(preset="tiny"), Vocab(300, eos_id=7, pad_id=8))
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (7, 7, 8)
    with pytest.raises(ModelConfigError, match="pad_id 300 lies outside"):
        build_model(ModelConfig(preset="tiny"), Vocab(300, eos_id=0, pad_id=300))
    with pytest.raises(ModelConfigError, match="block_size 512 exceeds"):
        build_model(ModelConfig(preset="tiny"), Vocab(300, 0, 1), block_size=512)


def _saved_tiny(tmp_path, vocab: int = 200):
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny"), Vocab(vocab, 0, 1))
    return model, save_model_dir(model, tmp_path / "pretrained")


def test_pretrained_directory_loads_with_its_weights(tmp_path):
    original, path = _saved_tiny(tmp_path)
    loaded = build_model(ModelConfig(pretrained=str(path)), Vocab(200, 0, 1))
    torch.testing.assert_close(loaded.model.embed_tokens.weight, original.model.embed_tokens.weight)
    assert loaded.config._attn_implementation == "sdpa"


def test_pretrained_vocab_mismatch_is_a_clear_error(tmp_path):
    _, path = _saved_tiny(tmp_path, vocab=200)
    with pytest.raises(ModelConfigError, match="vocabulary size mismatch.*200 token embeddings.*has 512"):
        build_model(ModelConfig(pretrained=str(path)), Vocab(512, 0, 1))
    with pytest.raises(ModelConfigError, match="no config.json"):
        build_model(ModelConfig(pretrained=str(tmp_path / "nowhere")), Vocab(512, 0, 1))


def test_pretrained_from_s3(tmp_path, s3):
    client, bucket = s3
    original, path = _saved_tiny(tmp_path)
    storage.upload_dir(path, f"s3://{bucket}/models/tiny")
    loaded = build_model(ModelConfig(pretrained=f"s3://{bucket}/models/tiny"), Vocab(200, 0, 1))
    torch.testing.assert_close(loaded.lm_head.weight, original.lm_head.weight)
