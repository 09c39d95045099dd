"""Shared pieces of the benchmarks (`pytest -m benchmark`): the MNIST-1D data, a dense resnet1d
trained once per session, and the measurement of an exported model through the same path the
pipeline uses (`compress.deploy.deploy`), so every benchmark number is measured on the file."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compress.core.technique import ExportPlan
from compress.core.train import TrainSpec, fit
from compress.datasets import Dataset, load
from compress.deploy import BundleSpec, deploy
from compress.models import build
from compress.targets import load_target

SEED = 0
DENSE_TRAIN = TrainSpec(epochs=15, lr=1e-3, batch_size=128)


@pytest.fixture(scope="session")
def mnist1d() -> Dataset:
    """MNIST-1D, 10,000 samples generated locally (7,000 train / 1,000 val / 2,000 test)."""
    return load("mnist1d", seed=SEED, samples=10_000)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load("digits", seed=SEED)


@pytest.fixture(scope="session")
def dense_resnet1d(mnist1d: Dataset) -> nn.Module:
    """The reference resnet1d (default width 64), trained 15 epochs with Adam; callers get a copy."""
    torch.manual_seed(SEED)
    model = build("resnet1d", input_shape=mnist1d.input_shape, num_classes=mnist1d.num_classes)
    fit(model, mnist1d.train, DENSE_TRAIN, seed=SEED)
    return model.eval()


@pytest.fixture(scope="module")
def digits_resnet2d(digits: Dataset) -> nn.Module:
    """resnet2d (width 32) trained 20 epochs on the 1,257 training digits."""
    torch.manual_seed(SEED)
    model = build("resnet2d", input_shape=digits.input_shape, num_classes=digits.num_classes, width=32)
    fit(model, digits.train, TrainSpec(epochs=20, lr=3e-3, batch_size=64), seed=SEED)
    return model.eval()


@pytest.fixture
def fresh_dense(dense_resnet1d: nn.Module) -> nn.Module:
    return copy.deepcopy(dense_resnet1d)


def measure(model: nn.Module, data: Dataset, out_dir: Path, *, name: str = "model", target: str = "rpi4",
            export_plan: ExportPlan | None = None, formats: tuple[str, ...] = ("onnx",)) -> dict[str, Any]:
    """Export `model`, verify it against PyTorch, and measure it exactly as a pipeline run does.

    ONNX by default, whatever the target's own format: the pruning, quantization and sharing bars
    are about the ONNX file and onnxruntime; `formats=("tflite",)` measures the LiteRT artifact."""
    spec = BundleSpec(name, load_target(target), "benchmark", "0" * 64, SEED, formats=formats)
    example = (torch.from_numpy(data.test.x[:1]),)
    return deploy(model.eval(), spec, data=data, example_inputs=example, export_plan=export_plan, stages=[],
                  out_dir=out_dir / name)
