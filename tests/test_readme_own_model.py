"""The README's own-loop snippet and `compress.export` example run exactly as written; a stale
optimizer (built before `compress.apply`) raises at the first step instead of training nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import compress
from compress import datasets
from compress.core.own_loop import StaleOptimizerError
from compress.quant.qat import QATConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = README.read_text(encoding="utf-8")
    tail = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", tail, re.S).group(1)


def test_readme_own_loop_snippet_runs_and_trains(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_block("### Your own training loop"), "README.md", "exec"), scope)  # noqa: S102 - our own README
    model, data = scope["model"], scope["data"]
    with torch.no_grad():
        acc = (model(torch.from_numpy(data.test.x)).argmax(1).numpy() == data.test.y).mean()
    assert acc > 0.5  # 2 epochs of an 8-bit MLP on digits: far above the 10 % of chance, so it did train


def test_readme_export_example_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_block("## Bring your own model"), "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["embeddings"].shape == (8, 32)
    assert "'1': 'sequence'" in capsys.readouterr().out


def test_an_optimizer_built_before_apply_raises_at_the_first_step():
    data = datasets.load("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # too early: QAT replaces the Linear
    result = compress.apply(model, QATConfig(weight_bits=8), target="rpi4", data=data)
    model, hooks = result.model, result.hooks
    x, y = torch.from_numpy(data.train.x[:32]), torch.from_numpy(data.train.y[:32])
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    hooks.after_backward(model)
    optimizer.step()
    with pytest.raises(StaleOptimizerError, match="build the optimizer after compress.apply"):
        hooks.after_step(model)


def test_an_optimizer_built_after_apply_passes_the_guard():
    data = datasets.load("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    result = compress.apply(model, QATConfig(weight_bits=8), target="rpi4", data=data)
    model, hooks = result.model, result.hooks
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.from_numpy(data.train.x[:32]), torch.from_numpy(data.train.y[:32])
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        hooks.after_backward(model)
        optimizer.step()
        hooks.after_step(model)  # no raise
