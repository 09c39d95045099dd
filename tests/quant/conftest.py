"""Shared pieces of the quantization tests: the bundled digits, a small trained resnet2d, and an
int4-capable target (no shipped target lists int4; this one is rpi4 with an int4 rate added)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.core.context import Context
from compress.core.train import TrainSpec, fit
from compress.datasets import Dataset, load
from compress.models import build
from compress.targets import Target, load_target


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """The 1,797 bundled 8×8 digits (1,257 train / 180 val / 360 test, 256 calib)."""
    return load("digits", seed=0)


@pytest.fixture(scope="session")
def trained(digits: Dataset) -> nn.Module:
    """resnet2d of width 8 trained 4 epochs on the digits (about 95 % test accuracy); callers copy it."""
    torch.manual_seed(0)
    model = build("resnet2d", input_shape=digits.input_shape, num_classes=10, width=8)
    fit(model, digits.train, TrainSpec(epochs=4, lr=0.01, batch_size=64), seed=0)
    return model.eval()


@pytest.fixture
def model(trained: nn.Module) -> nn.Module:
    return copy.deepcopy(trained)


@pytest.fixture
def ctx(digits: Dataset) -> Context:
    return Context(example_inputs=(torch.from_numpy(digits.test.x[:1]),), data=digits, target=load_target("rpi4"))


@pytest.fixture(scope="session")
def int4_target() -> Target:
    """rpi4 with an int4 throughput (2× its int8 rate): a stand-in for a device that computes at 4 bits."""
    rpi4 = load_target("rpi4")
    compute = rpi4.compute.model_copy(update={"throughput_gmacs": {**rpi4.compute.throughput_gmacs, "int4": 96.0}})
    return rpi4.model_copy(update={"name": "rpi4_int4", "compute": compute})
