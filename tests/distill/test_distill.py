"""Distillation: the loss the hook adds, a frozen teacher, and KD into early exits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import compress
from compress.core.errors import EdgetierError
from compress.core.train import TrainSpec, fit
from compress.distill.losses import kd_loss
from compress.distill.technique import DistillConfig
from compress.exits.technique import EarlyExitConfig
from compress.models import build


def _pair():
    torch.manual_seed(0)
    teacher = build("resnet1d", input_shape=(1, 40), num_classes=4, width=16)
    student = build("resnet1d", input_shape=(1, 40), num_classes=4, width=8)
    return teacher, student


def test_kd_loss_matches_its_definition():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    expected = (F.softmax(t / 3, 1) * (F.log_softmax(t / 3, 1) - F.log_softmax(s / 3, 1))).sum(1).mean() * 9
    torch.testing.assert_close(kd_loss(s, t, 3.0), expected)


def test_hook_turns_cross_entropy_into_the_hinton_mix():
    teacher, student = _pair()
    result = compress.apply(student, DistillConfig(temperature=2.0, alpha=0.7), teacher=teacher)
    x, y = torch.randn(6, 1, 40), torch.randint(0, 4, (6,))
    out = result.model(x)
    total = F.cross_entropy(out, y) + result.hooks.loss(result.model, x, out, y)
    with torch.no_grad():
        soft = teacher.eval()(x)
    # what the trainer optimizes: (1 - alpha) CE + alpha T^2 KL
    torch.testing.assert_close(total, 0.3 * F.cross_entropy(out, y) + 0.7 * kd_loss(out, soft, 2.0))


def test_teacher_stays_frozen_while_the_student_trains():
    teacher, student = _pair()
    teacher.train()  # left in train mode by the caller: the hook must still use eval (BN stats fixed)
    before = copy.deepcopy(teacher.state_dict())
    result = compress.apply(student, DistillConfig(), teacher=teacher)
    x = torch.randn(64, 1, 40).numpy()
    y = torch.randint(0, 4, (64,)).numpy()
    fit(result.model, (x, y), TrainSpec(epochs=2, lr=1e-2, batch_size=16), hooks=result.hooks)
    for key, value in teacher.state_dict().items():  # running statistics included
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert all(p.grad is None for p in teacher.parameters())


def test_the_callers_teacher_is_not_changed():
    # A recipe's teacher is the cloud model, and every later variant starts from a copy of it: a
    # teacher frozen in place made those variants' backbones untrainable (issue 5's benchmark).
    teacher, student = _pair()
    teacher.train()
    result = compress.apply(student, DistillConfig(), teacher=teacher)
    x, y = torch.randn(6, 1, 40), torch.randint(0, 4, (6,))
    result.hooks.loss(result.model, x, result.model(x), y)
    assert all(p.requires_grad for p in teacher.parameters())
    assert teacher.training
    later_variant = copy.deepcopy(teacher)
    F.cross_entropy(later_variant(x), y).backward()
    assert all(p.grad is not None for p in later_variant.parameters())


def test_exits_are_distilled_too():
    teacher, student = _pair()
    exits = compress.apply(student, EarlyExitConfig(after=("layer1",), weights=(0.5, 1.0)))
    distill = compress.apply(exits.model, DistillConfig(temperature=2.0, alpha=1.0), teacher=teacher)
    model = distill.model.train()
    x, y = torch.randn(6, 1, 40), torch.randint(0, 4, (6,))
    out = model(x)
    with torch.no_grad():
        soft = teacher.eval()(x)
    exit_logits = model.exit_logits[0]
    expected = (kd_loss(out, soft, 2.0) - F.cross_entropy(out, y)
                + 0.5 * (kd_loss(exit_logits, soft, 2.0) - F.cross_entropy(exit_logits, y)))
    torch.testing.assert_close(distill.hooks.loss(model, x, out, y), expected)


def test_bad_input():
    with pytest.raises(ValidationError):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValidationError):
        DistillConfig(temperature=0)
    _, student = _pair()
    with pytest.raises(EdgetierError, match="needs a teacher"):
        compress.apply(student, DistillConfig())
