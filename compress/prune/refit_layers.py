"""Which layers a least-squares channel cut applies to, and redoing a recorded cut.

`pointwise_readers` finds, in any model, the pointwise layers whose input channels
`compress.prune.reconstruct.prune_and_refit` can cut (made by one layer, read by that pointwise
layer alone) and the block each is matched to; `structured_prune`'s `importance: least_squares`
uses it. `remove_inputs` redoes a recorded cut on a fresh copy of the unpruned model, so that a
checkpoint's weights load (resume, bundles).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch import nn

from compress.core.errors import EdgetierError
from compress.prune.reconstruct import (
    _POINTWISE,
    _check_group,
    _check_pointwise,
    _depthwise,
    _norm_after,
    _prune_fn,
)

__all__ = ["pointwise_readers", "remove_inputs"]


def _forward_order(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    order: dict[str, int] = {}

    def first_call(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any) -> None:  # returns None: the inputs stay as they are
            order.setdefault(name, len(order))
        return hook

    handles = [m.register_forward_pre_hook(first_call(n)) for n, m in model.named_modules()]
    try:
        model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _adds_its_output(model: nn.Module, inner: nn.Module, block: nn.Module,
                     example_inputs: tuple[torch.Tensor, ...]) -> bool:
    """Whether `block`'s output is `inner`'s output plus terms that do not depend on it (a shift of
    `inner`'s output moves `block`'s output by exactly that shift)."""
    outputs: list[torch.Tensor] = []
    shift: list[torch.Tensor] = []

    def shifted(_m: nn.Module, _a: Any, out: torch.Tensor) -> torch.Tensor:
        shift.append(torch.randn(out.shape, generator=torch.Generator().manual_seed(0)))
        return out + shift[-1]

    def keep(_m: nn.Module, _a: Any, out: Any) -> None:
        outputs.append(out)

    handle = block.register_forward_hook(keep)
    try:
        model(*example_inputs)
        inner_handle = inner.register_forward_hook(shifted)
        try:
            model(*example_inputs)
        finally:
            inner_handle.remove()
    finally:
        handle.remove()
    if len(outputs) != 2 or len(shift) != 1 or not isinstance(outputs[0], torch.Tensor) or \
            outputs[0].shape != shift[0].shape:  # a container that is not called, or called more than once
        return False
    return bool(torch.allclose(outputs[1] - outputs[0], shift[0], rtol=1e-4, atol=1e-4))


@torch.no_grad()
def pointwise_readers(model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                      producers: Collection[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The pointwise layers whose input channels `prune_and_refit` can cut — made by one layer (one of
    `producers` when given), read by that pointwise layer alone (depthwise convolutions and norms in
    between) — in forward order, and for each the block to match: the innermost module holding the
    layer and another module of its channels' group (an inverted residual, a bottleneck), when that
    module's output is the layer's (or its norm's) output plus terms that do not depend on it.

    >>> block = nn.Sequential(nn.Conv2d(4, 12, 1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1, groups=12),
    ...                       nn.ReLU(), nn.Conv2d(12, 4, 1))
    >>> pointwise_readers(nn.Sequential(block).eval(), (torch.randn(1, 4, 6, 6),))
    (['0.4'], {'0.4': '0'})
    """
    import torch_pruning as tp

    was = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():  # torch-pruning traces the graph with autograd
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        named = dict(model.named_modules())
        names = {id(m): n for n, m in named.items()}
        order = _forward_order(model, example_inputs)
        layers: list[str] = []
        match: dict[str, str] = {}
        for name, layer in named.items():
            try:
                _check_pointwise(name, layer)
                group = graph.get_pruning_group(layer, _prune_fn(layer), idxs=[0])
                _check_group(name, layer, group, names)
            except EdgetierError:
                continue
            members = {names[id(dep.target.module)] for dep, _idxs in group if id(dep.target.module) in names} - {name}
            made_by = [names[id(dep.target.module)] for dep, _idxs in group if id(dep.target.module) in names
                       and getattr(dep.handler, "__name__", "") == "prune_out_channels"
                       and isinstance(dep.target.module, _POINTWISE) and not _depthwise(dep.target.module)]
            if name not in order or (producers is not None and not set(made_by) <= set(producers)):
                continue
            layers.append(name)
            parts = name.split(".")
            for cut in range(len(parts) - 1, 0, -1):
                block = ".".join(parts[:cut])
                if any(m.startswith(block + ".") for m in members):
                    norm = _norm_after(model, layer, example_inputs)
                    if _adds_its_output(model, named[norm] if norm else layer, named[block], example_inputs):
                        match[name] = block
                    break
        return sorted(layers, key=order.__getitem__), match
    finally:
        for module, training in was.items():
            module.training = training


def remove_inputs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], removed: Sequence[Sequence[Any]], *,
                  where: str) -> None:
    """Redo a `prune_and_refit` cut on a fresh copy of the unpruned model (`removed`: [layer, input
    channel indices, whether the refit added a bias] in the order they went, from its report), so
    its saved weights load."""
    import torch_pruning as tp

    for name, idxs, *bias_added in removed:
        try:
            layer = model.get_submodule(str(name))
            with torch.enable_grad():
                graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
            if idxs:
                graph.get_pruning_group(layer, _prune_fn(layer), idxs=[int(i) for i in idxs]).prune()
            if bias_added and bias_added[0] and layer.bias is None:  # the refit gave it one (no norm after it)
                layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        except Exception as exc:  # noqa: BLE001 - any mismatch means another model
            raise EdgetierError(f"the recorded least-squares cut of {name!r} does not fit this model "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", where=where,
                                fix="resume with the same model and recipe that produced the checkpoint") from None
