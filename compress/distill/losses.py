"""Distillation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² keeps its gradient scale comparable to cross-entropy's as T changes.

    >>> s = torch.tensor([[2.0, 0.0]]); t = torch.tensor([[2.0, 0.0]])
    >>> round(float(kd_loss(s, t, 4.0)), 6)
    0.0
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2
