"""Shared fixtures: a small trained 1-D CNN, its data, its fp32 and int8 ONNX files.

The model is trained for a few seconds on synthetic template signals so its logits have
real margins: top-1 agreement between int8 and fp32 means something only when the float
model is not guessing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.onnx import export_onnx
from export.quantize import quantize_int8_static

CLASSES = 10
LENGTH = 40


class TinyCNN(nn.Module):
    """Conv1d → ReLU → Conv1d → ReLU → MaxPool → Linear → ReLU → Linear: 52,170 parameters,
    96 % of them in the first Linear, so the file's bytes are almost all weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(640, 64), nn.ReLU(), nn.Linear(64, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a sine of k + 1 half-periods, randomly shifted, scaled and noised."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, LENGTH, dtype=np.float32)
    templates = np.stack([np.sin(np.pi * (k + 1) * t) for k in range(CLASSES)])
    y = rng.integers(0, CLASSES, n)
    shifts = rng.integers(-3, 4, n)
    x = np.stack([np.roll(templates[c], s) for c, s in zip(y, shifts, strict=True)])
    x = x * rng.uniform(0.7, 1.3, (n, 1)) + 0.3 * rng.standard_normal((n, LENGTH))
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def data() -> dict[str, np.ndarray]:
    x_train, y_train = make_signals(512, seed=0)
    x_test, y_test = make_signals(256, seed=1)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@pytest.fixture(scope="session")
def model(data: dict[str, np.ndarray]) -> TinyCNN:
    torch.manual_seed(0)
    net = TinyCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    for epoch in range(6):  # ~2 s on 2 cores; reaches ~96 % test accuracy
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="session")
def fp32_onnx(model: TinyCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with guarded(tmp_path_factory):
        return export_onnx(
            model, (torch.zeros(1, 1, LENGTH),), tmp_path_factory.mktemp("fp32") / "model.onnx"
        )


@pytest.fixture(scope="session")
def int8_onnx(fp32_onnx: Path, data: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    with guarded(tmp_path_factory):
        return quantize_int8_static(fp32_onnx, dst, data["x_train"][:256])


@pytest.fixture(autouse=True)
def no_files_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with guarded(tmp_path_factory):
        yield


@contextmanager
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail when the code inside leaves files in the working directory or the temp dir.

    Both are redirected to fresh empty folders (the real ones are shared with other
    processes, so snapshots of them would race); each must be empty again afterwards.
    """
    cwd, temp = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("systemp")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(tempfile, "tempdir", str(temp))
        yield
    left = sorted(str(p.relative_to(cwd.parent)) for d in (cwd, temp) for p in d.iterdir())
    assert not left, f"files left behind: {left}"
