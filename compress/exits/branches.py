"""Exit branches attached between the stages of a chain model, and the model that carries them.

A chain model is one whose `forward` is its top-level children applied in order (every
reference model is: stem → layer1 → layer2 → layer3 → head). Exits attach after named
children; that is also where the model is cut into segments for export.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

HEAD_KINDS = ("pool_fc", "conv_pool_fc", "sepconv_pool_fc")


def _separable(dims: int, c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    """Depthwise k×k conv + pointwise 1×1 conv + BatchNorm + ReLU (MobileNet's block): a wide
    receptive field for a small fraction of a full conv's MACs."""
    conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
    return [conv(c_in, c_in, kernel, stride=stride, padding=kernel // 2, groups=c_in, bias=False),
            conv(c_in, c_out, 1, bias=False), norm(c_out), nn.ReLU()]


class ExitHead(nn.Module):
    """A small classifier on a stage's output, then global average pool + Linear:

    - `pool_fc`: nothing before the pool;
    - `conv_pool_fc`: one k×k conv + ReLU (BranchyNet's branches);
    - `sepconv_pool_fc`: two depthwise-separable conv blocks, the first with stride 2 and twice the
      channels. An exit after an early stage sees features whose receptive field covers only part
      of the input; these blocks widen it cheaply (MNIST-1D, resnet1d w32 growth 2, exit after
      layer1, kernel 5: 97.7 % on all test samples vs 96.0 % for `conv_pool_fc` with kernel 3, for
      67k vs 62k MACs). On tokens: two Linear + ReLU layers.

    >>> head = ExitHead((8, 20), 10, kind="sepconv_pool_fc", kernel=5)
    >>> tuple(head(torch.zeros(2, 8, 20)).shape), head.fc.in_features
    ((2, 10), 16)
    """

    def __init__(self, feature_shape: Sequence[int], num_classes: int, *, kind: str = "pool_fc",
                 layout: str = "channels_first", kernel: int = 3) -> None:
        super().__init__()
        self.layout = layout
        self.kind = kind
        channels = feature_shape[-1] if layout == "tokens" else feature_shape[0]
        spatial = len(feature_shape) - 1
        self.conv: nn.Module = nn.Identity()
        width = channels
        if kind == "conv_pool_fc":
            if layout == "tokens":
                self.conv = nn.Sequential(nn.Linear(channels, channels), nn.ReLU())
            else:
                conv = nn.Conv1d if spatial == 1 else nn.Conv2d
                self.conv = nn.Sequential(conv(channels, channels, kernel, padding=kernel // 2), nn.ReLU())
        elif kind == "sepconv_pool_fc":
            width = 2 * channels
            if layout == "tokens":
                self.conv = nn.Sequential(nn.Linear(channels, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
            else:
                self.conv = nn.Sequential(*_separable(spatial, channels, width, kernel, 2),
                                          *_separable(spatial, width, width, kernel, 1))
        elif kind != "pool_fc":
            raise ValueError(f"unknown exit head {kind!r}; use one of {', '.join(HEAD_KINDS)}")
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.conv(features)
        if self.layout == "tokens":  # (B, N, D): mean over tokens
            return self.fc(x.mean(dim=1))
        return self.fc(x.flatten(2).mean(dim=2))  # (B, C, ...): global average pool


class EarlyExitModel(nn.Module):
    """A chain model with exit heads after some of its children.

    `forward` returns the final logits, as the backbone does; in training mode it also keeps the
    exits' logits in `exit_logits` for the loss hooks. `all_logits(x)` returns every exit's
    logits and the final ones, in order.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], exit_weights: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.exits = nn.ModuleDict(heads)
        self.exit_weights = tuple(float(w) for w in exit_weights)
        self.exit_logits: list[torch.Tensor] = []

    @property
    def after(self) -> tuple[str, ...]:
        return tuple(self.exits.keys())

    def train(self, mode: bool = True) -> EarlyExitModel:
        # the exits' logits of the last training batch belong to that batch's graph; eval drops them
        if not mode:
            self.exit_logits = []
        return super().train(mode)

    def __deepcopy__(self, memo: dict[int, Any]) -> EarlyExitModel:
        # `exit_logits` holds the last training batch's non-leaf tensors, which torch refuses to
        # deep-copy (pruning stages copy the model); a copy starts without them, like a fresh model
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = [] if key == "exit_logits" else copy.deepcopy(value, memo)
        return clone

    def all_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for name, child in self.backbone.named_children():
            x = child(x)
            if name in self.exits:
                out.append(self.exits[name](x))
        return [*out, x]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.backbone(x)
        *exits, final = self.all_logits(x)
        self.exit_logits = exits
        return final

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone.example_inputs(batch))


@torch.no_grad()
def stage_shapes(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape of every top-level child of a chain model (run in eval mode, so
    BatchNorm statistics are not touched)."""
    was_training = model.training
    model.eval()
    try:
        x = example_inputs[0]
        shapes = {}
        for name, child in model.named_children():
            x = child(x)
            shapes[name] = tuple(x.shape[1:])
        return shapes
    finally:
        model.train(was_training)


@torch.no_grad()
def is_chain(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> bool:
    """Whether `model(x)` equals its top-level children applied in order (checked numerically)."""
    was_training = model.training
    model.eval()
    try:
        x = example_inputs[0]
        chained = x
        for child in model.children():
            chained = child(chained)
        reference = model(x)
        return isinstance(reference, torch.Tensor) and reference.shape == chained.shape and bool(
            torch.allclose(reference, chained, atol=1e-6, rtol=1e-5))
    except (RuntimeError, TypeError):
        return False
    finally:
        model.train(was_training)
