"""The trainer's learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compress.core.train import TrainSpec, fit


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_run(monkeypatch) -> None:
    """One step per epoch (16 samples, batch 16): the lr used by step k is lr·(1 + cos(πk/K))/2."""
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    seen: list[float] = []
    real = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    fit(nn.Linear(4, 2), (x, y), TrainSpec(epochs=4, lr=0.1, batch_size=16, schedule="cosine"))
    assert seen == pytest.approx([0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)], rel=1e-6)
    seen.clear()
    fit(nn.Linear(4, 2), (x, y), TrainSpec(epochs=4, lr=0.1, batch_size=16))  # constant: the default
    assert seen == [0.1] * 4
