"""Label-free distillation: a compressed model learns its uncompressed teacher's function on
unlabeled inputs, for a pretrained model whose training set the user does not have.

The loss is Hinton's soft-target KL between teacher and student logits at a temperature
(`compress.distill.losses.kd_loss`); the inputs come from any generator — for images, heavily
augmented crops of a few offline images (`compress.datasets.augmented`, after Asano & Saeed,
"Extrapolating from a single image to a thousand classes using distillation", ICLR 2021).

The student trains in eval mode by default: its BatchNorm layers keep the statistics the teacher
learned on its real training data (re-estimating them on a few images' crops moved them away:
EfficientNet-Lite0 pruned at 5 % kept the fp32 top-1 on 48 % of held-out photo views as pruned, 12 %
after re-estimation; tests/benchmarks/test_ptq.py), and dropout / stochastic depth stay off so the
student matches the teacher's deterministic outputs. Adam, with a linear warm-up over the first 3 %
of the steps and a cosine decay to zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from compress.core.errors import EdgetierError
from compress.distill.losses import kd_loss

__all__ = ["distill_unlabeled", "mean_kl"]

WHERE = "distill_unlabeled"


def distill_unlabeled(student: nn.Module, teacher: nn.Module, inputs: Callable[[int], torch.Tensor], *, steps: int,
                      lr: float = 5e-4, temperature: float = 4.0, train_mode: bool = False,
                      log: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `student` for `steps` Adam steps on KL(teacher ‖ student) at `temperature` on the batches
    `inputs(step)` returns; the teacher is only run (eval mode, no gradients). Returns the loss of
    every step. `train_mode` trains the student in train mode (BatchNorm statistics updated, dropout
    on) instead of eval mode. `log(step, loss)` is called every 25 steps.

    >>> _ = torch.manual_seed(0)
    >>> teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    >>> losses = distill_unlabeled(student, teacher, lambda step: torch.randn(32, 4), steps=200, lr=1e-2)
    >>> losses[-1] < 0.1 * losses[0]
    True
    """
    if steps < 1 or lr <= 0 or temperature <= 0:
        raise EdgetierError(f"label-free distillation needs steps >= 1, lr > 0 and temperature > 0; got steps={steps}, "
                            f"lr={lr}, temperature={temperature}", where=WHERE, fix="pass positive values")
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise EdgetierError("the student has no trainable parameter", where=WHERE,
                            fix="set requires_grad on the parameters to train")
    optimizer = torch.optim.Adam(params, lr=lr)
    warmup = max(1, int(0.03 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))
    was = student.training, teacher.training
    teacher.eval()
    student.train(train_mode)
    losses: list[float] = []
    try:
        for step in range(steps):
            x = inputs(step)
            with torch.no_grad():
                target = teacher(x)
            loss = kd_loss(student(x), target, temperature)
            if not torch.isfinite(loss):
                raise EdgetierError(f"label-free distillation diverged at step {step + 1} (loss {float(loss)})",
                                    where=WHERE, fix="lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if log is not None and (step + 1) % 25 == 0:
                log(step + 1, sum(losses[-25:]) / len(losses[-25:]))
    finally:
        student.train(was[0])
        teacher.train(was[1])
    return losses


@torch.no_grad()
def mean_kl(student: nn.Module, teacher: nn.Module, x: torch.Tensor, *, temperature: float = 1.0,
            batch: int = 64) -> float:
    """Mean KL(teacher ‖ student) of the softmax at `temperature` over the inputs `x` (both in eval mode).

    >>> model = nn.Linear(4, 3)
    >>> mean_kl(model, model, torch.randn(8, 4))
    0.0
    """
    was = student.training, teacher.training
    student.eval()
    teacher.eval()
    try:
        total = sum(float(kd_loss(student(x[i:i + batch]), teacher(x[i:i + batch]), temperature)) * len(x[i:i + batch])
                    for i in range(0, len(x), batch))
    finally:
        student.train(was[0])
        teacher.train(was[1])
    return round(total / len(x) / temperature**2, 6) + 0.0
