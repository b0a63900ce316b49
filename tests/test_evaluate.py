"""Evaluation: perplexity and bits per byte checked against the model's own loss and the decoded text, stride
handling, how much of the split is scored, eval.json, bad inputs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmops.config import EvaluateConfig, ModelConfig
from lmops.evaluate.token_bytes import token_byte_lengths
from lmops.data.tokens import load_split, open_tokens
from lmops.evaluate.metrics import EvaluationError, evaluate_model, perplexity, windows
from lmops.manifest import ManifestError
from lmops.model import ModelConfigError, Vocab, build_model, count_params, save_model_dir

torch.set_num_threads(1)
QUICK = dict(latency_new_tokens=4, latency_repeats=1)


@pytest.fixture(scope="module")
def test_ids(tiny_tokens):
    return load_split(open_tokens(tiny_tokens), "test")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_perplexity_equals_exp_of_the_models_own_mean_loss(tiny_model_dir, tiny_tokens, test_ids, model):
    block, n_blocks = 64, 30
    # independently: the model's own labels= loss on consecutive non-overlapping blocks
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor(test_ids[i * block:(i + 1) * block], dtype=torch.long)[None],
                        labels=torch.tensor(test_ids[i * block:(i + 1) * block], dtype=torch.long)[None]).loss.item()
                  for i in range(n_blocks)]
    expected = math.exp(sum(losses) / n_blocks)
    metrics = evaluate_model(tiny_model_dir, tiny_tokens, EvaluateConfig(block_size=block, max_blocks=n_blocks,
                                                                         batch_size=7, **QUICK))
    assert metrics["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert metrics["scored_tokens"] == n_blocks * (block - 1) and metrics["blocks"] == n_blocks
    assert 1 < metrics["perplexity"] < 512  # trained a little: better than uniform over the vocabulary


def hf_sliding_window_nll(model, ids, block: int, stride: int) -> tuple[float, int]:
    """(total NLL in nats, targets) by Hugging Face's recipe, written out: mask targets an earlier window
    already scored with -100 and let the model's own labels= loss average the rest."""
    nll_sum, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + block, len(ids))
            x = torch.tensor(ids[begin:end], dtype=torch.long)[None]
            labels = x.clone()
            labels[:, : max(prev_end - begin, 0)] = -100
            n = int((labels[:, 1:] != -100).sum())
            nll_sum += model(input_ids=x, labels=labels).loss.item() * n
            count += n
            prev_end = end
            if end == len(ids):
                break
    return nll_sum, count


def test_strided_perplexity_matches_the_hf_sliding_window_recipe(test_ids, model):
    ids = test_ids[:700]
    block, stride = 64, 24
    nll_sum, count = hf_sliding_window_nll(model, ids, block, stride)
    got = perplexity(model, ids, block, stride, batch_size=5, device=torch.device("cpu"))
    assert got["scored_tokens"] == count == len(ids) - 1  # every token after the first, exactly once
    assert got["perplexity"] == pytest.approx(math.exp(nll_sum / count), rel=1e-5)
    # non-overlapping blocks leave each block's first token unscored (no context inside its window)
    plain = perplexity(model, ids, block, block, 5, torch.device("cpu"))
    assert plain["scored_tokens"] == len(ids) - math.ceil(len(ids) / block)


def test_the_whole_split_is_scored_unless_max_blocks_caps_it(tiny_model_dir, tiny_tokens, test_ids):
    n, block = len(test_ids), 64
    whole = evaluate_model(tiny_model_dir, tiny_tokens, EvaluateConfig(block_size=block, **QUICK))
    # independently: windows start at 0, block, 2*block... while a target is left after the start
    # (a start at n - 1 would have nothing to predict); each scores all its tokens but the first
    starts = math.ceil((n - 1) / block)
    assert (whole["split_tokens"], whole["blocks"], whole["scored_tokens"]) == (n, starts, n - starts)
    capped = evaluate_model(tiny_model_dir, tiny_tokens, EvaluateConfig(block_size=block, max_blocks=5, **QUICK))
    assert (capped["split_tokens"], capped["blocks"], capped["scored_tokens"]) == (n, 5, 5 * (block - 1))
    assert EvaluateConfig().max_blocks is None


def test_bits_per_byte_matches_the_decoded_text_and_the_models_own_loss(tiny_model_dir, tiny_tokens, test_ids,
                                                                       model):
    block, stride = 64, 32  # overlapping windows score every token of the split but the first
    metrics = evaluate_model(tiny_model_dir, tiny_tokens, EvaluateConfig(block_size=block, stride=stride, **QUICK))
    nll_nats, count = hf_sliding_window_nll(model, test_ids, block, stride)
    hf_tok = AutoTokenizer.from_pretrained(tiny_tokens / "tokenizer")
    # the first token starts a document, so the scored text starts on a character boundary; the split
    # ends with EOS, so it ends on one. EOS stands for no text (skipped), its NLL still counts.
    text = hf_tok.decode(test_ids[1:].tolist(), skip_special_tokens=True)
    assert "\ufffd" not in hf_tok.decode(test_ids[:1].tolist()) and "\ufffd" not in text
    n_bytes = len(text.encode("utf-8"))
    assert metrics["scored_tokens"] == count == len(test_ids) - 1
    assert metrics["scored_bytes"] == n_bytes
    assert metrics["bits_per_byte"] == pytest.approx(nll_nats / math.log(2) / n_bytes, rel=1e-5)
    # bits per byte and perplexity are the same NLL over different units
    assert metrics["bits_per_byte"] == pytest.approx(math.log2(metrics["perplexity"]) * count / n_bytes, rel=1e-9)


def test_token_byte_lengths_count_partial_characters_exactly(tiny_tokens, tmp_path):
    hf_tok = AutoTokenizer.from_pretrained(tiny_tokens / "tokenizer")
    table = token_byte_lengths(tiny_tokens / "tokenizer")
    assert len(table) == len(hf_tok)
    text = "naïve café: 漢字 and 🙂, then ascii.\n"
    ids = hf_tok.encode(text, add_special_tokens=False)
    # a 512-token BPE splits these characters into byte tokens, which decode alone to U+FFFD
    assert any(hf_tok.decode([i]) == "\ufffd" for i in ids)
    assert int(table[ids].sum()) == len(text.encode("utf-8"))
    assert table[hf_tok.eos_token_id] == 0 and table[hf_tok.pad_token_id] == 0
    # no exact per-token bytes without a byte-level decoder: no table (bits_per_byte is then None)
    word_level = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word_level.save(str(tmp_path / "tokenizer.json"))
    assert token_byte_lengths(tmp_path) is None


def test_windows_score_each_target_once():
    for n, block, stride in [(100, 16, 16), (100, 16, 5), (101, 16, 7), (10, 16, 4), (50, 8, 12)]:
        scored = [p for _, end, start in windows(n, block, stride) for p in range(start, end)]
        assert len(scored) == len(set(scored)) and min(scored) >= 1 and max(scored) == n - 1
        assert all(end - begin <= block and start > begin for begin, end, start in windows(n, block, stride))
        if stride < block:
            assert sorted(scored) == list(range(1, n))
    assert windows(1, 16, 16) == []


def test_eval_json_and_metrics(tiny_model_dir, tiny_tokens, tmp_path):
    cfg = EvaluateConfig(block_size=64, max_blocks=8, latency_prompt_tokens=8, latency_new_tokens=6, latency_repeats=3)
    metrics = evaluate_model(tiny_model_dir, tiny_tokens, cfg, out=tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == metrics
    assert metrics["size_bytes"] == (tiny_model_dir / "model.safetensors").stat().st_size
    assert metrics["params"] == count_params(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert metrics["eval_tokens_per_s"] > 0 and metrics["latency_ms_per_token"] > 0
    assert (metrics["latency_prompt_tokens"], metrics["latency_new_tokens"]) == (8, 6)
    assert metrics["tokens_digest"] == open_tokens(tiny_tokens).manifest.digest
    assert metrics["scored_bytes"] > metrics["scored_tokens"] and metrics["bits_per_byte"] > 0
    # the same blocks in another batch size give the same perplexity
    other = evaluate_model(tiny_model_dir, tiny_tokens, cfg.model_copy(update={"batch_size": 1, **QUICK}))
    assert other["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-5)


def test_bad_inputs_are_clear_errors(tiny_model_dir, tiny_tokens, tmp_path):
    cfg = EvaluateConfig(block_size=64, max_blocks=2, **QUICK)
    with pytest.raises(EvaluationError, match="no config.json"):
        evaluate_model(tmp_path / "missing", tiny_tokens, cfg)
    with pytest.raises(ManifestError, match="calibration"):
        evaluate_model(tiny_model_dir, tiny_tokens, cfg, split="calibration")
    with pytest.raises(ManifestError, match="not found"):
        evaluate_model(tiny_model_dir, tmp_path / "no-tokens", cfg)
    # a model built for another tokenizer
    other = save_model_dir(build_model(ModelConfig(preset="tiny"), Vocab(300, 0, 1)), tmp_path / "other")
    with pytest.raises(ModelConfigError, match="vocabulary size mismatch"):
        evaluate_model(other, tiny_tokens, cfg)
    # a token shard changed after the tokenize stage wrote it
    corrupt = shutil.copytree(tiny_tokens, tmp_path / "tokens")
    data = bytearray((corrupt / "test.bin").read_bytes())
    data[10] ^= 0xFF
    (corrupt / "test.bin").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        evaluate_model(tiny_model_dir, corrupt, cfg)
