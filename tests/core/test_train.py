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


def test_fit_takes_record_arrays_and_trains_label_free_on_the_hooks_loss():
    """Token inputs arrive as a record array (one field per model input); without labels the only
    loss is the stages' (here: pull the output towards 1), and no cross-entropy is added."""
    import numpy as np
    from torch import nn

    from compress.core.technique import Hooks, HookSet
    from compress.core.train import TrainSpec, fit

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return (self.emb(ids) * mask[..., None]).sum(1)

    x = np.zeros(32, dtype=[("ids", "int64", (5,)), ("mask", "int64", (5,))])
    x["ids"] = np.random.default_rng(0).integers(0, 10, (32, 5))
    x["mask"] = 1
    seen = []
    hooks = HookSet([Hooks(loss=lambda m, inputs, out, y: (seen.append(len(inputs)) or ((out - 1) ** 2).mean()))])
    model = TwoInputs()
    history = fit(model, (x, np.zeros(32, np.int64)), TrainSpec(epochs=20, lr=0.05, batch_size=8), hooks=hooks,
                  supervised=False)
    assert set(seen) == {2}  # the hook saw both inputs
    assert history.losses[-1] < 0.1 * history.losses[0]  # 20 epochs of Adam on a quadratic: far below the start


def test_label_free_training_without_a_loss_from_a_stage_is_one_clear_error():
    import numpy as np
    import pytest
    from torch import nn

    from compress.core.errors import EdgetierError
    from compress.core.train import TrainSpec, fit

    with pytest.raises(EdgetierError, match="without labels needs a loss from a stage"):
        fit(nn.Linear(4, 2), (np.zeros((8, 4), np.float32), np.zeros(8, np.int64)), TrainSpec(epochs=1),
            supervised=False)


@pytest.mark.parametrize("dropout", [True, False])
def test_dropout_false_trains_with_every_dropout_off_and_restores_it(dropout: bool):
    """`dropout: false` (label-free distillation): the Dropout modules run with p = 0 during the
    training passes, and keep their p afterwards; by default they drop as configured."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    seen: list[float] = []
    model[1].register_forward_hook(lambda m, args, out: seen.append(float((out == 0).float().mean())))
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32") + 3  # ReLU-free: zeros come from dropout
    y = np.zeros(64, dtype=np.int64)
    fit(model, (x, y), TrainSpec(epochs=1, lr=1e-3, batch_size=32, dropout=dropout))
    assert model[1].p == 0.5 and len(seen) == 2
    assert all(share > 0.2 for share in seen) if dropout else all(share == 0 for share in seen)
