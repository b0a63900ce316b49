"""The single-process loop: it learns, its schedule, accumulation, sampling and MFU bookkeeping."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from lmops.config import ModelConfig, TrainConfig, config_from_dict
from lmops.data.tokens import load_split, open_tokens
from lmops.devices import DeviceError, resolve_device
from lmops.model import Vocab, build_model, count_params
from lmops.train.data import Batches
from lmops.train.flops import flops_per_token, matmul_params, mfu, model_flops_per_token, peak_flops
from lmops.train.loop import format_log, train_single, train_step
from lmops.train.optim import lr_at, make_optimizer

torch.set_num_threads(1)


def test_loss_falls_on_real_text(tiny_tokens, tmp_path):
    cfg = config_from_dict({"train": {"max_steps": 120, "micro_batch_size": 8, "block_size": 64, "lr": 3e-3,
                                      "warmup_steps": 10, "log_every": 20, "eval_every": 60, "eval_batches": 4}})
    lines: list[str] = []
    result = train_single(cfg, tiny_tokens, tmp_path / "model", log=lines.append)

    val = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert val[0] > 5.5  # an untrained model: about ln(512) = 6.24
    assert val[-1] < val[0] - 0.6, val
    train_losses = [h["loss"] for h in result.history if "loss" in h]
    assert train_losses[-1] < train_losses[0] - 0.3, train_losses
    # log lines: step, loss, lr, tokens/s; no MFU on a CPU (unknown peak, never guessed)
    step_lines = [ln for ln in lines if "tok/s" in ln]
    assert len(step_lines) == 6 and step_lines[0].startswith("step 20/120 | loss ")
    assert all("mfu" not in ln for ln in step_lines) and result.mfu is None
    # a self-contained HF model directory
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == open_tokens(tiny_tokens).vocab_size
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == 120


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    lrs = [lr_at(s, cfg) for s in range(cfg.max_steps)]
    assert lrs[0] == pytest.approx(1e-4)  # lr / warmup_steps
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # linear warm-up rises
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never rises
    assert lrs[-1] == pytest.approx(1e-4) and min(lrs) >= 1e-4 - 1e-12
    mid = 10 + (99 - 10) // 2  # cosine: halfway through the decay, halfway between lr and min_lr
    assert lrs[mid] == pytest.approx((1e-3 + 1e-4) / 2, rel=0.05)
    assert lr_at(500, cfg) == pytest.approx(1e-4)  # past the end: stays at min_lr


def _tiny_model(vocab: int = 128) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny"), Vocab(vocab, 0, 1))


def test_grad_accumulation_matches_one_big_batch():
    model = _tiny_model()
    x = torch.randint(0, 128, (8, 32))
    y = torch.randint(0, 128, (8, 32))
    cfg = TrainConfig()
    results = {}
    for name, batches, accum in [("accum", [(x[:4], y[:4]), (x[4:], y[4:])], 2), ("big", [(x, y)], 1)]:
        m = copy.deepcopy(model)
        opt = make_optimizer(m, cfg, "cpu")
        # lr 0: the step runs in full but leaves the weights alone, so the gradients can be compared
        out = train_step(m, opt, iter(batches), lr=0.0, grad_accum=accum, grad_clip=1.0)
        results[name] = (out, {n: p.grad.clone() for n, p in m.named_parameters()})
    (acc_out, acc_grads), (big_out, big_grads) = results["accum"], results["big"]
    assert acc_out.tokens == big_out.tokens == 8 * 32
    assert acc_out.loss.item() == pytest.approx(big_out.loss.item(), rel=1e-5)
    assert acc_out.grad_norm.item() == pytest.approx(big_out.grad_norm.item(), rel=1e-4)
    for name, g in big_grads.items():
        torch.testing.assert_close(acc_grads[name], g, rtol=1e-4, atol=1e-6)


def test_train_step_updates_weights_and_decays_only_matrices():
    model = _tiny_model()
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), "cpu")
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all((p.dim() >= 2) == (id(p) in decayed) for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 128, (2, 16))
    train_step(model, opt, iter([(x, x)]), lr=1e-2)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(g["lr"] == 1e-2 for g in opt.param_groups)


def test_batches_seeded_resumable_and_sharded(tiny_tokens):
    ids = load_split(open_tokens(tiny_tokens), "train")
    a, b = Batches(ids, 4, 32, seed=7), Batches(ids, 4, 32, seed=7)
    x, y = next(a)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    torch.testing.assert_close(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert torch.equal(x, next(b)[0])  # same seed, same stream
    assert not torch.equal(x, next(Batches(ids, 4, 32, seed=8))[0])
    # a checkpointed sampler continues the stream instead of repeating it
    state = json.loads(json.dumps(a.state_dict()))
    expected = next(a)[0]
    c = Batches(ids, 4, 32, seed=7)
    c.load_state_dict(state)
    assert torch.equal(next(c)[0], expected) and c.batches_drawn == 2
    with pytest.raises(ValueError, match="rank"):
        Batches(ids, 4, 32, seed=7, rank=1, world_size=2).load_state_dict(state)
    # ranks draw from disjoint shards: with ids equal to their positions, every window shows where it came from
    positions = np.arange(10_000, dtype=np.uint32)
    for rank in range(3):
        windows = torch.cat([torch.cat(next(Batches(positions, 64, 32, seed=7, rank=rank, world_size=3)), 1)
                             for _ in range(20)])
        assert windows.min() >= rank * 3333 and windows.max() < (rank + 1) * 3333 + (rank == 2)
    with pytest.raises(ValueError, match="too small"):
        Batches(np.arange(20, dtype=np.uint16), 2, 32, seed=0)


def test_mfu_unknown_device_is_none_and_h100_uses_the_table():
    assert mfu(1e5, 1e9, "cpu", "float32") is None
    assert mfu(1e5, 1e9, "NVIDIA GeForce GTX 1080", "bfloat16") is None
    # torch.cuda.get_device_name() of an H100 SXM: bf16 dense peak 989 TFLOP/s
    assert mfu(2e5, 7.5e8, "NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(2e5 * 7.5e8 / 989e12)
    assert mfu(2e5, 7.5e8, "NVIDIA H100 80GB HBM3", torch.bfloat16, n_devices=2) == pytest.approx(2e5 * 7.5e8 / 989e12 / 2)
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert peak_flops("NVIDIA A10G", "bfloat16") != peak_flops("NVIDIA A10", "bfloat16")
    assert peak_flops("NVIDIA L40S", "float32") != peak_flops("NVIDIA L4", "float32")
    assert peak_flops("NVIDIA H100 80GB HBM3", "float64") is None


def test_flops_per_token_counts_matmul_weights_and_attention():
    with torch.device("meta"):
        model = build_model(ModelConfig(preset="gpt2-124m"), Vocab(32768, 0, 1))
    n = matmul_params(model)
    assert n == count_params(model)  # tied: the embedding matrix is the LM head's weight, counted once
    fpt = model_flops_per_token(model, 1024)
    assert fpt == flops_per_token(n, 12, 12, 64, 1024) == 6 * n + 12 * 12 * 768 * 1024
    untied = build_model(ModelConfig(preset="tiny", tie_embeddings=False), Vocab(128, 0, 1))
    assert matmul_params(untied) == count_params(untied) - 128 * 64  # the input lookup is no matmul


def test_log_line_format():
    assert format_log(50, 200, 5.1234, 1e-3, 12345.6, 0.412) == \
        "step 50/200 | loss 5.123 | lr 1.00e-03 | 12,346 tok/s | mfu 41.2%"
    assert format_log(50, 200, 5.1234, 1e-3, 12345.6, None) == "step 50/200 | loss 5.123 | lr 1.00e-03 | 12,346 tok/s"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_one_is_a_clear_error(tiny_tokens, tmp_path):
    with pytest.raises(DeviceError, match="train.device=cuda"):
        resolve_device("cuda")
    cfg = config_from_dict({"train": {"device": "cuda", "max_steps": 1}})
    with pytest.raises(DeviceError, match="no CUDA device"):
        train_single(cfg, tiny_tokens, tmp_path / "m", log=None)
    assert not (tmp_path / "m").exists()


def test_lr_at_is_finite_for_short_runs():
    for max_steps, warmup in [(1, 0), (1, 5), (5, 5), (6, 5)]:
        cfg = TrainConfig(max_steps=max_steps, warmup_steps=warmup)
        assert all(math.isfinite(lr_at(s, cfg)) and lr_at(s, cfg) > 0 for s in range(max_steps))
