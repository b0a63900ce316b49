"""Pruning: the target sparsity is reached over the linear weights only, the zeros survive a recovery
fine-tune and a reload with plain transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmops.compress.prune import magnitude_masks, prunable, prune_dir, sparsity_of
from lmops.config import config_from_dict

torch.set_num_threads(1)


def _cfg(sparsity: float, steps: int):
    return config_from_dict({"train": {"micro_batch_size": 8, "block_size": 64, "eval_batches": 4},
                             "compress": {"prune": {"sparsity": sparsity, "recovery_steps": steps,
                                                    "recovery_lr": 3e-4}}})


def test_global_masks_hit_the_target_and_prefer_small_weights():
    w = {"a": torch.tensor([[0.1, -5.0], [3.0, 0.2]]), "b": torch.tensor([[-0.05, 4.0, 0.3, 6.0]])}
    masks = magnitude_masks(w, 0.5)  # 8 weights -> the 4 smallest |w| go, whichever tensor holds them
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [[False, True, False, True]]
    assert all(m.all() for m in magnitude_masks(w, 0.0).values())


def test_pruned_dir_reaches_sparsity_and_zeros_survive_recovery_and_reload(tiny_model_dir, tiny_tokens, tmp_path):
    report = prune_dir(tiny_model_dir, tmp_path / "pruned", _cfg(0.7, 12), tiny_tokens)
    assert report["sparsity"] == pytest.approx(0.7, abs=0.005)
    assert report["val_loss_after_recovery"] < report["val_loss_before_recovery"]
    fp32 = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")  # no lmops code on the way in
    weights = prunable(plain)
    assert sparsity_of(weights) == pytest.approx(report["sparsity"], abs=1e-9)
    per_layer = [sparsity_of({n: w}) for n, w in weights.items()]
    assert max(per_layer) - min(per_layer) > 0.05  # one global threshold: layers give up different shares
    # embeddings (and the tied head) stay dense
    assert sparsity_of({"emb": plain.get_input_embeddings().weight}) < 0.01
    assert "lm_head.weight" not in weights and "model.embed_tokens.weight" not in weights
    # recovery changed the surviving weights (it trained), so the result is not just the masked checkpoint
    src = prunable(fp32)
    name = next(iter(weights))
    kept = weights[name] != 0
    assert not torch.equal(weights[name][kept], src[name][kept])


def test_without_recovery_the_survivors_are_the_checkpoints_weights(tiny_model_dir, tmp_path):
    report = prune_dir(tiny_model_dir, tmp_path / "pruned", _cfg(0.3, 0))
    assert "val_loss_after_recovery" not in report and report["sparsity"] == pytest.approx(0.3, abs=0.005)
    src = prunable(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    got = prunable(AutoModelForCausalLM.from_pretrained(tmp_path / "pruned"))
    for name, w in got.items():
        kept = w != 0
        torch.testing.assert_close(w[kept], src[name][kept], rtol=0, atol=0)
        assert w[~kept].numel() == 0 or src[name][~kept].abs().max() <= src[name][kept].abs().max()
