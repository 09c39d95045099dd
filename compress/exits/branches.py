"""Exit branches attached between the stages of a chain model, and the model that carries them.

A chain model is one whose `forward` is its top-level children applied in order (every
reference model is: stem → layer1 → layer2 → layer3 → head). Exits attach after named
children; that is also where the model is cut into segments for export.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

HEAD_KINDS = ("pool_fc", "conv_pool_fc")


class ExitHead(nn.Module):
    """A small classifier on a stage's output: global average pool + Linear (`pool_fc`), or a
    3×3 conv + ReLU first (`conv_pool_fc`, as BranchyNet's branches)."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int, *, kind: str = "pool_fc",
                 layout: str = "channels_first") -> None:
        super().__init__()
        self.layout = layout
        self.kind = kind
        channels = feature_shape[-1] if layout == "tokens" else feature_shape[0]
        spatial = len(feature_shape) - 1
        self.conv: nn.Module = nn.Identity()
        if kind == "conv_pool_fc":
            if layout == "tokens":
                self.conv = nn.Sequential(nn.Linear(channels, channels), nn.ReLU())
            else:
                conv = nn.Conv1d if spatial == 1 else nn.Conv2d
                self.conv = nn.Sequential(conv(channels, channels, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(channels, num_classes)

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
