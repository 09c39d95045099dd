"""Counting what a PyTorch model costs: parameters, non-zeros, MACs, activation bytes.

MACs come from `torch.utils.flop_counter.FlopCounterMode` (convolutions, matmuls,
attention), halved because it counts a multiply-accumulate as two FLOPs. Element-wise ops
(ReLU, add, BatchNorm at inference) are not counted: they are small next to conv/matmul and
the targets' throughput figures are MAC rates.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Total parameter elements.

    >>> count_params(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Parameter elements that are not exactly zero (what unstructured sparsity leaves).

    >>> layer = nn.Linear(3, 2, bias=False)
    >>> _ = nn.init.zeros_(layer.weight)
    >>> count_nonzero(layer)
    0
    """
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward pass on `example_inputs`, in eval mode.

    >>> count_macs(nn.Linear(3, 2), (torch.zeros(1, 3),))
    6
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*example_inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


@torch.no_grad()
def activation_bytes(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, bytes_per_element: int = 4) -> int:
    """Bytes of every leaf module's output in one forward pass: the activation traffic a roofline charges.

    >>> activation_bytes(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), (torch.zeros(1, 3),))
    16
    """
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * bytes_per_element

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        model(*example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
