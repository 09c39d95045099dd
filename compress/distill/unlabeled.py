"""Label-free distillation: a compressed model learns its uncompressed teacher's function on
unlabeled inputs, for a pretrained model whose training set the user does not have.

The loss is Hinton's soft-target KL between teacher and student logits at a temperature
(`compress.distill.losses.kd_loss`); the inputs come from any generator — for images, heavily
augmented crops of a few offline images (`compress.datasets.augmented`, after Asano & Saeed,
"Extrapolating from a single image to a thousand classes using distillation", ICLR 2021).

The student trains in train mode (BatchNorm normalizes with batch statistics) with every Dropout
off, so it matches the teacher's deterministic outputs; its running statistics are then
re-estimated on the same kind of inputs at the resolution it will run at (`reestimate_batchnorm`).
Measured 2026-12-07 on EfficientNet-Lite0 pruned at ratio 0.3, 150 steps at 112x112: top-1 / top-5
agreement with the teacher on 100 calibration-photo views 21 % / 47 % this way (T = 1), 2 % / 14 %
training in eval mode with the teacher's statistics frozen (T = 4). Re-estimating the statistics of
the *unpruned-then-pruned* model without training does not help: the teacher's ImageNet statistics
are better than ones from a few images' crops (pruned at 5 %: 48 % top-1 as pruned, 12 % after).
Adam, with a linear warm-up over the first 3 % of the steps and a cosine decay to zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from compress.core.errors import EdgetierError
from compress.distill.losses import kd_loss

__all__ = ["distill_unlabeled", "mean_kl", "reestimate_batchnorm"]

WHERE = "distill_unlabeled"


def distill_unlabeled(student: nn.Module, teacher: nn.Module, inputs: Callable[[int], torch.Tensor], *, steps: int,
                      lr: float = 1e-3, temperature: float = 1.0, train_mode: bool = True,
                      log: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `student` for `steps` Adam steps on KL(teacher ‖ student) at `temperature` on the batches
    `inputs(step)` returns; the teacher is only run (eval mode, no gradients). Returns the loss of
    every step. `train_mode` False trains in eval mode (BatchNorm running statistics used and kept);
    either way every `nn.Dropout` is off (p = 0, restored after) — a model's own stochastic depth
    (EfficientNet's drop_connect) is for the caller to turn off. `log(step, loss)` is called every
    25 steps.

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
    dropouts = {m: m.p for m in student.modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    teacher.eval()
    student.train(train_mode)
    for m in dropouts:
        m.p = 0.0
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
        for m, p in dropouts.items():
            m.p = p
    return losses


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm layer's running statistics by their average over `batches` (forward
    passes in train mode, dropout off; the model is left in eval mode). Returns the inputs seen.

    >>> model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    >>> reestimate_batchnorm(model, [torch.randn(8, 1, 4, 4) + 3.0 for _ in range(4)])
    32
    >>> bool(model[1].running_mean.abs().max() > 0.5)
    True
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise EdgetierError(f"{type(model).__name__} has no BatchNorm layer whose statistics could be re-estimated",
                            where="reestimate_batchnorm", fix="skip the re-estimation for this model")
    dropouts = {m: m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    for m in dropouts:
        m.p = 0.0
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, p in dropouts.items():
            m.p = p
        model.eval()
    return seen


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
