"""Shared pieces of the NAS tests: the bundled digits (real data that trains in a blink) and tiny searches."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from compress.datasets import Dataset, load
from compress.models import build


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load("digits", seed=0)


@pytest.fixture
def cloud(digits: Dataset) -> torch.nn.Module:
    torch.manual_seed(0)
    return build("resnet2d", input_shape=digits.input_shape, num_classes=digits.num_classes, width=8)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A search that trains each candidate one epoch on 256 digits: a fraction of a second per trial."""
    config: dict[str, Any] = {
        "kind": "nas", "strategy": "evolution", "trials": 6, "population": 3, "sample_size": 2, "batch": 2,
        "space": {"family": "resnet2d", "width": 16, "depth": [1, 2], "width_mult": [0.5, 1.0], "kernel": [3, 5],
                  "expansion": [0.5, 1.0]},
        "budget": {"max_latency_ms": 0.25},
        "proxy": {"epochs": 1, "samples": 256, "lr": 0.01, "batch_size": 64},
    }
    config.update(overrides)
    return config
