"""The compress stage end to end (the only Ray run of these tests: one distillation, ~40 s), budgets
deciding verdicts, and bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmops.compress import CompressError
from lmops.compress.stage import compress_stage
from lmops.config import config_from_dict
from lmops.manifest import ManifestError, read_manifest, run_stage, verify

torch.set_num_threads(1)


def _cfg(tmp_path, compress: dict):
    return config_from_dict({
        "workdir": str(tmp_path / "work"), "cache_dir": None,
        "train": {"micro_batch_size": 4, "block_size": 64, "eval_batches": 2, "log_every": 10},
        "evaluate": {"block_size": 64, "max_blocks": 24, "latency_prompt_tokens": 16, "latency_new_tokens": 4,
                     "latency_repeats": 1},
        "compress": compress})


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_model_dir, tmp_path_factory):
    """tiny_model_dir published as a train-stage output (manifest.json with digests), as the pipeline has it."""
    out = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    run_stage("train", out, code="test", config={}, inputs={},
              produce=lambda tmp: shutil.copytree(tiny_model_dir, tmp, dirs_exist_ok=True) and {},
              log=lambda s: None)
    return out


def test_stage_writes_scored_gated_variants(ray_runtime, trained_checkpoint, tiny_tokens, tmp_path):
    cfg = _cfg(tmp_path, {"prune": {"sparsity": 0.3, "recovery_steps": 5},
                          "distill": {"steps": 20, "init": "random"}})
    res = compress_stage(cfg, trained_checkpoint, tiny_tokens, tmp_path / "out", log=lambda s: None)
    out = res.path
    rows = {r["variant"]: r for r in json.loads((out / "compress.json").read_text())["rows"]}
    assert list(rows) == ["fp32", "int8", "pruned", "student"]
    baseline = json.loads((out / "fp32_eval.json").read_text())
    for name in ("int8", "pruned", "student"):
        ev = json.loads((out / name / "eval.json").read_text())
        r = rows[name]
        assert r["perplexity"] == ev["perplexity"] and r["bits_per_byte"] == ev["bits_per_byte"] > 0
        assert r["perplexity_ratio"] == pytest.approx(ev["perplexity"] / baseline["perplexity"])
        assert r["size_bytes"] == ev["size_bytes"] > 0
        # the configured budget decides, through lmops.gates
        budget = cfg.compress.gates[name]["perplexity"].max_ratio
        assert r["passed"] == (r["perplexity_ratio"] <= budget + 1e-9)
        assert any(f"<= {budget}" in reason for reason in r["reasons"])
    assert rows["int8"]["size_ratio"] < 0.6 and rows["int8"]["linear_weight_ratio"] < 0.3
    assert rows["pruned"]["sparsity"] == pytest.approx(0.3, abs=0.005)
    assert rows["student"]["params"] < rows["fp32"]["params"]
    # distillation through Ray lowered the student's (plain LM) validation loss
    distilled = json.loads((out / "student" / "distill_metrics.json").read_text())
    assert distilled["steps"] == 20 and distilled["val_loss"] < distilled["first_val_loss"] - 0.3, distilled
    assert (out / "compress.png").stat().st_size > 5000
    m = read_manifest(out, "compress")
    assert m.inputs["checkpoint"]["digest"] == read_manifest(trained_checkpoint).digest
    assert m.inputs["tokens"]["digest"] == read_manifest(tiny_tokens).digest
    assert "int8/quantized.safetensors" in m.files and "student/model.safetensors" in m.files
    # each variant is a sealed directory of its own, naming the checkpoint it was made from
    for name, stage, source in (("int8", "quantize", "checkpoint"), ("pruned", "prune", "checkpoint"),
                                ("student", "distill", "teacher")):
        vm = verify(out / name, stage)
        assert vm.inputs[source]["digest"] == m.inputs["checkpoint"]["digest"]
        assert vm.inputs[source]["path"] == str(trained_checkpoint)
        assert vm.metrics["passed"] == rows[name]["passed"] and "eval.json" in vm.files


def test_an_impossible_budget_fails_that_variant_with_a_reason(trained_checkpoint, tiny_tokens, tmp_path):
    cfg = _cfg(tmp_path, {"distill": {"enabled": False}, "prune": {"sparsity": 0.5, "recovery_steps": 0},
                          "gates": {"pruned": {"perplexity": {"max_ratio": 0.5}},
                                    "int8": {"perplexity": {"max_ratio": 1.02}}}})
    res = compress_stage(cfg, trained_checkpoint, tiny_tokens, tmp_path / "out", log=lambda s: None)
    rows = {r["variant"]: r for r in json.loads((res.path / "compress.json").read_text())["rows"]}
    assert set(rows) == {"fp32", "int8", "pruned"}
    assert rows["int8"]["passed"] is True
    assert rows["pruned"]["passed"] is False
    assert rows["pruned"]["reasons"][0].startswith("FAIL perplexity: ratio") and "<= 0.5" in rows["pruned"]["reasons"][0]
    assert res.manifest.counts["passed"] == ["int8"]
    # every candidate is scored by the same evaluate: the same tokens and bytes, bits per byte for each
    fp32 = json.loads((res.path / "fp32_eval.json").read_text())
    for name in ("int8", "pruned"):
        ev = json.loads((res.path / name / "eval.json").read_text())
        assert [ev[k] for k in ("scored_tokens", "split_tokens", "scored_bytes")] == \
            [fp32[k] for k in ("scored_tokens", "split_tokens", "scored_bytes")]
        assert rows[name]["bits_per_byte"] == ev["bits_per_byte"] > 0
    again = compress_stage(cfg, trained_checkpoint, tiny_tokens, tmp_path / "out", log=lambda s: None)
    assert again.cached


def test_missing_or_corrupt_checkpoint(trained_checkpoint, tiny_model_dir, tiny_tokens, tmp_path):
    cfg = _cfg(tmp_path, {"distill": {"enabled": False}})
    with pytest.raises(CompressError, match="nope: checkpoint directory not found"):
        compress_stage(cfg, tmp_path / "nope", tiny_tokens, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompressError, match="empty: not a Hugging Face model directory"):
        compress_stage(cfg, tmp_path / "empty", tiny_tokens, tmp_path / "out")
    # a published checkpoint whose weights changed afterwards: the manifest catches it
    changed = shutil.copytree(trained_checkpoint, tmp_path / "changed")
    with open(changed / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ManifestError, match="model.safetensors: sha256"):
        compress_stage(cfg, changed, tiny_tokens, tmp_path / "out")
    # a directory trained elsewhere (no manifest) with truncated weights: the load error names it
    truncated = shutil.copytree(tiny_model_dir, tmp_path / "truncated")
    (truncated / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CompressError, match="truncated: cannot load the checkpoint"):
        compress_stage(cfg, truncated, tiny_tokens, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written is published
