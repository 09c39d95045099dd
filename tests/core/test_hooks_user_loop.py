"""The hooks a technique returns work in a user's own training loop, unchanged apart from the calls."""

import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.core.config import TechniqueConfig
from compress.core.technique import BaseTechnique, Hooks, HookSet, Result
from compress.registry import REGISTRY


class ClampConfig(TechniqueConfig):
    kind: str = "test_clamp"
    limit: float = 0.05
    penalty: float = 0.0


class Clamp(BaseTechnique):
    """A test technique: keeps every Linear weight within ±limit after each step, counts the calls."""

    config_type = ClampConfig

    def apply(self, model, ctx):
        calls = {"loss": 0, "after_backward": 0, "after_step": 0, "epoch_end": 0}
        limit, penalty = self.config.limit, self.config.penalty

        def loss(m, inputs, outputs, targets):
            calls["loss"] += 1
            return penalty * sum((p ** 2).sum() for p in m.parameters())

        def after_backward(m):
            calls["after_backward"] += 1
            assert all(p.grad is not None for p in m.parameters())  # called between backward and step

        def after_step(m):
            calls["after_step"] += 1
            with torch.no_grad():
                for p in m.parameters():
                    p.clamp_(-limit, limit)

        def epoch_end(m, epoch):
            calls["epoch_end"] += 1

        hooks = HookSet([Hooks(loss=loss, after_backward=after_backward, after_step=after_step, epoch_end=epoch_end)])
        return Result(model, {"calls": calls}, hooks=hooks)


def test_hooks_in_a_users_own_loop(monkeypatch):
    monkeypatch.setitem(REGISTRY, "test_clamp", Clamp)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    result = compress.apply(model, ClampConfig(limit=0.05, penalty=1e-3), example_inputs=(x[:1],))
    model, report = result
    hooks = result.hooks
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    # --- the user's loop, with the four hook calls added ---
    for epoch in range(3):
        for i in range(0, 64, 16):
            out = model(x[i:i + 16])
            loss = F.cross_entropy(out, y[i:i + 16]) + hooks.loss(model, x[i:i + 16], out, y[i:i + 16])
            optimizer.zero_grad()
            loss.backward()
            hooks.after_backward(model)
            optimizer.step()
            hooks.after_step(model)
        hooks.epoch_end(model, epoch)
    assert report["calls"] == {"loss": 12, "after_backward": 12, "after_step": 12, "epoch_end": 3}
    # lr 0.5 moves weights far past 0.05; only the hook keeps them inside
    assert max(float(p.detach().abs().max()) for p in model.parameters()) <= 0.05 + 1e-7


def test_our_trainer_calls_the_same_hooks(monkeypatch):
    from compress.core.train import TrainSpec, fit

    monkeypatch.setitem(REGISTRY, "test_clamp", Clamp)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x = torch.randn(40, 4).numpy()
    y = (x[:, 0] > 0).astype("int64")
    result = compress.apply(model, ClampConfig(limit=0.01), example_inputs=(torch.zeros(1, 4),))
    fit(result.model, (x, y), TrainSpec(epochs=2, lr=1.0, batch_size=10), hooks=result.hooks)
    assert result.report["calls"] == {"loss": 8, "after_backward": 8, "after_step": 8, "epoch_end": 2}
    assert float(result.model.weight.detach().abs().max()) <= 0.01 + 1e-7
