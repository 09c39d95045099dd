"""The plain PyTorch model a NAS sample stands for: a residual CNN with per-stage depth, width,
kernel size and expansion ratio, laid out like the reference models (stem, layer1..3, head) so
that later stages (pruning, quantization, early exits, distillation) treat it like any other.

An architecture is a plain dict (`Arch`), which is what `Result.state` stores and what a resumed
run rebuilds the model from.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from compress.models.base import ReferenceModel

Arch = dict[str, Any]  # {"family", "stem", "stages": [{"depth", "width", "kernel", "expansion"}, ...]}

_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d}
_NORM: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_POOL: dict[int, type[nn.Module]] = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}
FAMILIES: dict[str, dict[str, Any]] = {
    # dims, strides of the three stages, stem kernel: as compress.models.resnet1d / resnet2d
    "resnet1d": {"dims": 1, "strides": (2, 2, 2), "stem_kernel": 5},
    "resnet2d": {"dims": 2, "strides": (1, 2, 2), "stem_kernel": 3},
}


def _conv(dims: int, c_in: int, c_out: int, kernel: int, stride: int) -> nn.Module:
    return _CONV[dims](c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class Block(nn.Module):
    """conv(k) → BN → ReLU → conv(k) → BN, plus a shortcut; the inner width is ``expansion · c_out``."""

    def __init__(self, dims: int, c_in: int, c_out: int, *, mid: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(dims, c_in, mid, kernel, stride)
        self.bn1 = _NORM[dims](mid)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(dims, mid, c_out, kernel, 1)
        self.bn2 = _NORM[dims](c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(OrderedDict(conv=_conv(dims, c_in, c_out, 1, stride), bn=_NORM[dims](c_out)))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class SearchedResNet(ReferenceModel):
    """A residual CNN built from an `Arch`; ``arch`` is kept on the module for reports."""

    def __init__(self, arch: Arch, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(tuple(input_shape), num_classes)
        family = FAMILIES[arch["family"]]
        dims = family["dims"]
        self.arch = arch
        stem = int(arch["stem"])
        self.stem = nn.Sequential(OrderedDict(conv=_conv(dims, input_shape[0], stem, family["stem_kernel"], 1),
                                              bn=_NORM[dims](stem), relu=nn.ReLU()))
        c_in = stem
        for i, (stage, stride) in enumerate(zip(arch["stages"], family["strides"], strict=True), start=1):
            c_out, mid = int(stage["width"]), int(stage["mid"])
            blocks = [Block(dims, c_in if b == 0 else c_out, c_out, mid=mid, kernel=int(stage["kernel"]),
                            stride=stride if b == 0 else 1) for b in range(int(stage["depth"]))]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            c_in = c_out
        self.head = nn.Sequential(OrderedDict(pool=_POOL[dims](1), flatten=nn.Flatten(), fc=nn.Linear(c_in, num_classes)))


def build_arch(arch: Arch, *, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None) -> SearchedResNet:
    """The plain model of `arch`; with `seed`, its initialization is fixed by it (not by the global RNG state).

    >>> arch = {"family": "resnet1d", "stem": 8, "stages": [
    ...     {"depth": 1, "width": 8, "mid": 8, "kernel": 3}, {"depth": 2, "width": 16, "mid": 8, "kernel": 5},
    ...     {"depth": 1, "width": 16, "mid": 16, "kernel": 3}]}
    >>> model = build_arch(arch, input_shape=(1, 40), num_classes=10, seed=0)
    >>> tuple(model(*model.example_inputs(2)).shape), len(model.layer2)
    ((2, 10), 2)
    """
    if seed is None:
        return SearchedResNet(arch, input_shape=input_shape, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SearchedResNet(arch, input_shape=input_shape, num_classes=num_classes)


def arch_key(arch: Arch) -> str:
    """A short, stable text for an architecture (journal key, report label).

    >>> arch_key({"family": "resnet1d", "stem": 8, "stages": [{"depth": 1, "width": 8, "mid": 4, "kernel": 3}]})
    'resnet1d s8 | d1 w8 m4 k3'
    """
    stages = " | ".join(f"d{s['depth']} w{s['width']} m{s['mid']} k{s['kernel']}" for s in arch["stages"])
    return f"{arch['family']} s{arch['stem']} | {stages}"
