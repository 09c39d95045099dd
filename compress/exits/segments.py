"""Cutting an `EarlyExitModel` into segments for export: segment k runs from the previous cut to
exit k and returns (exit logits, features); the last segment returns the final logits.

No data-dependent control flow goes into any graph: the exit policy lives in the manifest and
runs in `export.runtime` (exporters break on such control flow; PyTorch issue 143192)."""

from __future__ import annotations

import torch
from torch import nn

from compress.exits.branches import EarlyExitModel


class Segment(nn.Module):
    def __init__(self, stages: list[nn.Module], head: nn.Module | None) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        for stage in self.stages:
            x = stage(x)
        return (self.head(x), x) if self.head is not None else x


def split(model: EarlyExitModel) -> list[Segment]:
    """The segments of `model`, in order; chaining them gives `model.all_logits`.

    >>> from compress.exits.branches import ExitHead
    >>> backbone = nn.Sequential()
    >>> backbone.add_module("a", nn.Linear(4, 4)); backbone.add_module("b", nn.Linear(4, 3))
    >>> m = EarlyExitModel(backbone, {"a": ExitHead((4,), 3, layout="tokens")}, [1.0]).eval()
    >>> [len(s.stages) for s in split(m)]
    [1, 1]
    """
    segments, pending = [], []
    for name, child in model.backbone.named_children():
        pending.append(child)
        if name in model.exits:
            segments.append(Segment(pending, model.exits[name]))
            pending = []
    segments.append(Segment(pending, None))
    return segments
