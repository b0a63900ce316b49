"""The distillation objective and the student's initialisation (the Ray run is in test_stage.py)."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lmops.compress.distill import init_student, kd_loss, student_model_config
from lmops.config import DistillConfig


def test_kd_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    y = torch.randint(0, 11, (2, 5), generator=g)
    T, alpha = 2.0, 0.3
    p = F.softmax(t / T, -1)
    kl = (p * (p.log() - F.log_softmax(s / T, -1))).sum(-1).mean()  # per token, averaged
    ce = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    assert kd_loss(s, t, y, T, alpha).item() == pytest.approx((alpha * T * T * kl + (1 - alpha) * ce).item(), rel=1e-5)
    assert kd_loss(s, t, y, T, 0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    assert kd_loss(t, t, y, T, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # a perfect student


def test_student_shape_and_teacher_layer_init(tiny_model_dir):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    mc = student_model_config(teacher, DistillConfig())
    assert mc.n_layer == max(1, teacher.config.num_hidden_layers // 2) and mc.d_model == teacher.config.hidden_size
    student, how = init_student(teacher, DistillConfig(n_layer=2), seed=0)
    assert how == "teacher_layers [0, 1]"
    for a, b in zip(student.state_dict().values(), teacher.state_dict().values()):
        torch.testing.assert_close(a, b)
    narrow, how = init_student(teacher, DistillConfig(d_model=32, n_head=2, d_ff=64), seed=0)
    assert how.startswith("random") and narrow.config.hidden_size == 32
    assert narrow.config.vocab_size == teacher.config.vocab_size
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in teacher.parameters())
