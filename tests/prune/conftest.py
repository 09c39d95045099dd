"""Shared pieces of the pruning tests: real data (the bundled digits) and small seeded models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.datasets import Dataset, Split, load
from compress.models import build


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """The 1,797 bundled 8×8 digits (1,257 train / 180 val / 360 test): real data that trains in seconds."""
    return load("digits", seed=0)


@pytest.fixture(scope="session")
def few_digits(digits: Dataset) -> Dataset:
    """The digits with 384 train samples (3 batches of 128), for tests that train many times."""
    return Dataset(name="digits", train=Split(digits.train.x[:384], digits.train.y[:384]), val=digits.val,
                   test=digits.test, calib=digits.calib, input_shape=digits.input_shape,
                   num_classes=digits.num_classes, labels=digits.labels)


def _small(zoo: str = "resnet2d", shape: tuple[int, ...] = (1, 8, 8), *, seed: int = 0,
           **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    if zoo != "transformer":
        kwargs.setdefault("width", 16)
    return build(zoo, input_shape=shape, num_classes=10, **kwargs)


@pytest.fixture
def small():
    """`small(zoo, shape, seed=0, **options)`: a seeded zoo model with 10 classes (CNN width 16 by
    default, so halving keeps a multiple of the rpi4 target's channel_multiple 8)."""
    return _small
