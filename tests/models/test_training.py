"""The reference models learn their bundled data: a fast digits check, a slow MNIST-1D one."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from compress.datasets import Dataset, load
from compress.models import build


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Two threads on two shared cores run ~10× slower whenever anything else is busy (measured:
    # 43 ms vs 5.5 ms for one conv step); one thread keeps the time and the result steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_and_test(model: nn.Module, data: Dataset, *, epochs: int, batch: int, lr: float, seed: int) -> float:
    """Adam on ``data.train`` for ``epochs``; accuracy on ``data.test``."""
    x, y = (torch.from_numpy(a) for a in data.train)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=order).split(batch):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.test.x)).argmax(dim=1)
    return (predicted == torch.from_numpy(data.test.y)).float().mean().item()


def test_resnet2d_learns_digits_in_three_epochs(one_thread: None) -> None:
    data = load("digits", seed=0)
    torch.manual_seed(0)
    model = build("resnet2d", input_shape=data.input_shape, num_classes=data.num_classes)
    start = time.perf_counter()
    accuracy = train_and_test(model, data, epochs=3, batch=32, lr=1e-3, seed=0)
    # Measured 97.8–99.2 % over seeds 0–2 in ~4 s; 85 % is far above chance (10 %) and below
    # any seed's result, so the check fails only when learning is broken.
    assert accuracy >= 0.85, f"test accuracy {accuracy:.3f}"
    assert time.perf_counter() - start < 60, "training took far longer than the ~4 s measured"


@pytest.mark.slow
def test_resnet1d_reaches_90_percent_on_mnist1d(one_thread: None) -> None:
    data = load("mnist1d", samples=10_000, seed=0)
    torch.manual_seed(0)
    model = build("resnet1d", input_shape=data.input_shape, num_classes=data.num_classes)
    accuracy = train_and_test(model, data, epochs=15, batch=128, lr=1e-3, seed=0)
    # Measured ~97.5 % (7,000 training samples). The published MNIST-1D CNN reaches ~94 % with
    # 4,000; 90 % leaves room for seeds and torch versions but not for a model that barely learns.
    assert accuracy >= 0.90, f"test accuracy {accuracy:.3f}"
