"""What every reference model shares: the stage layout, example inputs, argument checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from compress.core.errors import EdgetierError

STAGES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "head")


class ReferenceModel(nn.Module):
    """``stem → layer1 → layer2 → layer3 → head``, each a named child module.

    Later stages attach early exits after ``layer1``..``layer3`` and cut the model into
    segments there, so ``forward`` is nothing but the chain. Subclasses assign the five children;
    ``head`` always ends in an ``nn.Linear`` named ``head.fc``.
    """

    # How a stage's output is laid out, for heads attached between stages (early exits):
    # "channels_first" is (B, C, L) or (B, C, H, W); "tokens" is (B, N, D).
    feature_layout: str = "channels_first"

    stem: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    head: nn.Module

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor]:
        """A standard-normal batch of the model's input shape, the same values on every call.

        A private generator draws them, so the caller's ``torch.manual_seed`` stream is untouched.
        """
        generator = torch.Generator().manual_seed(0)
        device = next(self.parameters()).device
        return (torch.randn((batch, *self.input_shape), generator=generator).to(device),)


def positive_int(value: Any, name: str, where: str) -> int:
    """``value`` if it is an integer >= 1 (not a bool), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EdgetierError(f"{name} is {value!r}", where=where, fix=f"give {name} as an integer >= 1")
    return value


def stage_blocks(value: Any, where: str) -> tuple[int, int, int]:
    """Blocks per stage: three integers >= 1 (a list from YAML is fine)."""
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in value)):
        raise EdgetierError(f"blocks is {value!r}", where=where,
                            fix="give blocks as three integers >= 1, one per stage, e.g. [1, 1, 1]")
    return (value[0], value[1], value[2])


def check_input_shape(value: Any, dims: Sequence[int], where: str, hint: str) -> tuple[int, ...]:
    """``value`` as a tuple if it has one of the ``dims`` lengths and positive sizes."""
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) not in dims
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)):
        raise EdgetierError(f"input_shape is {value!r}", where=where, fix=hint)
    return tuple(value)
