"""The common shape of a shared-weight layer: a Conv/Linear whose weight is rebuilt in forward.

`SharedLayer` keeps the original layer's call (stride, padding, dilation, groups) and bias;
subclasses say how the dense weight is rebuilt from their compact tensors
(`dense_weight`). The layer then calls `F.conv1d` / `F.conv2d` / `F.linear`, so the
exported graph is the weight-building subgraph followed by the usual Conv or Gemm.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import EdgetierError
from compress.core.selectors import select

SUPPORTED: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


class SharedLayer(nn.Module):
    """Base of `ClusteredLayer` and `HashedLayer`; not used on its own."""

    technique = "shared"

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if isinstance(layer, nn.Linear):
            self.op: str = "linear"
            self.call_args: dict[str, Any] = {}
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            self.op = "conv1d" if isinstance(layer, nn.Conv1d) else "conv2d"
            self.call_args = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                              "groups": layer.groups}
        else:  # pragma: no cover - callers check with `shareable_layers` first
            raise TypeError(f"cannot share the weights of {type(layer).__name__}")
        self.weight_shape: tuple[int, ...] = tuple(layer.weight.shape)
        self.source_type = type(layer).__name__
        bias = layer.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight this layer computes with (rebuilt; writing to it changes nothing)."""
        return self.dense_weight()

    def dense_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dense_weight()
        if self.op == "linear":
            return F.linear(x, w, self.bias)
        conv = F.conv1d if self.op == "conv1d" else F.conv2d
        return conv(x, w, self.bias, **self.call_args)

    def extra_repr(self) -> str:
        return f"{self.source_type}{list(self.weight_shape)}"


def shareable_layers(model: nn.Module, targets: tuple[str, ...], ignore: tuple[str, ...], *, kind: str,
                     where: str) -> dict[str, nn.Module]:
    """The layers `targets`/`ignore` select for technique `kind`, checked.

    `re:` and `type:` selectors pick the Conv1d / Conv2d / Linear layers among what they match
    (`re:layer1\\..*` means the block's convolutions, not its BatchNorms); an exact name must
    name one. A layer already shared by a technique is an error (clustering a hashed layer), as
    is a selection with no layer at all.
    """
    chosen = select(model, targets, ignore, default_types=(*SUPPORTED, SharedLayer), where=where)
    named = [t for t in targets if not t.startswith(("re:", "type:"))]
    wrong = {n: type(chosen[n]).__name__ for n in named if n in chosen and not isinstance(chosen[n], (*SUPPORTED, SharedLayer))}
    if wrong:
        names = ", ".join(f"{n} ({t})" for n, t in wrong.items())
        raise EdgetierError(f"{kind} shares the weights of Conv1d, Conv2d and Linear layers only, not {names}",
                            where=where, fix="name Conv1d/Conv2d/Linear layers, or use `re:` / `type:` selectors")
    chosen = {n: m for n, m in chosen.items() if isinstance(m, (*SUPPORTED, SharedLayer))}
    if not chosen:
        raise EdgetierError(f"the selectors leave no Conv1d, Conv2d or Linear layer for {kind}", where=where,
                            fix="select convolutions or linear layers, e.g. targets: ['type:Conv1d', 'type:Linear']")
    shared = {n: m for n, m in chosen.items() if isinstance(m, SharedLayer)}
    if shared:
        names = ", ".join(f"{n} ({m.technique})" for n, m in shared.items())
        raise EdgetierError(f"{kind} cannot apply to layers whose weights are already shared: {names}", where=where,
                            fix="a layer is either hashed or clustered, not both: add these layers to `ignore`, "
                                "or leave them out of the earlier stage")
    odd = [n for n, m in chosen.items() if getattr(m, "padding_mode", "zeros") != "zeros"]
    if odd:
        raise EdgetierError(f"{kind} supports zero-padded convolutions only; {', '.join(odd)} pad otherwise",
                            where=where, fix="add these layers to `ignore`")
    return chosen


def check_not_shared_twice(config: Any, earlier: list[Any], model: nn.Module, *, where: str) -> None:
    """At recipe load: an error when `config` would share a layer that an earlier stage of the same
    variant already hashes or clusters (at run time `shareable_layers` would refuse it, after
    the earlier stages' training)."""
    mine = config.shared_layers(model)
    for before in earlier:
        if hasattr(before, "shared_layers"):
            both = sorted(mine & before.shared_layers(model))
            if both:
                listing = ", ".join(repr(n) for n in both)
                raise EdgetierError(f"{config.kind} would share layer(s) {listing}, whose weights an earlier "
                                    f"{before.kind} stage already shares: a layer is either hashed or clustered, "
                                    "not both", where=where,
                                    fix=f"add {listing} to the `ignore` of this stage or of the {before.kind} stage")


def densified(model: nn.Module) -> nn.Module:
    """A copy of `model` whose shared layers are plain Conv / Linear layers holding the dense weights
    they rebuild: for formats with no codebook or hashed storage (LiteRT), where the sharing then
    shows only in the file's compressed size. Same outputs.

    >>> from compress.share.clustering import cluster_layer
    >>> model = nn.Sequential(nn.Linear(8, 4))
    >>> model[0], _ = cluster_layer(model[0], clusters=4, granularity="layer", init="linear",
    ...                             preserve_sparsity=False, iterations=10, seed=0)
    >>> plain = densified(model); type(plain[0]).__name__, len(plain[0].weight.unique())
    ('Linear', 4)
    """
    model = copy.deepcopy(model)
    for name, layer in list(model.named_modules()):
        if not (hasattr(layer, "dense_weight") and hasattr(layer, "call_args")):  # a SharedLayer (by shape: a
            continue  # doctest run under --import-mode=importlib holds a second copy of this module's classes)
        weight = layer.dense_weight().detach()
        bias = layer.bias is not None
        if layer.op == "linear":
            plain: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
        else:
            conv = nn.Conv1d if layer.op == "conv1d" else nn.Conv2d
            plain = conv(weight.shape[1] * layer.call_args["groups"], weight.shape[0], tuple(weight.shape[2:]),
                         bias=bias, **layer.call_args)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if bias:
                plain.bias.copy_(layer.bias.detach())
        replace_layer(model, name, plain)
    return model


def layer_to_restore(model: nn.Module, name: str, shape: list[int], *, what: str, where: str) -> nn.Module:
    """The layer `name` of `model` that a restore rebuilds, checked to have the recorded weight shape."""
    layer = dict(model.named_modules()).get(name)
    if layer is None or not hasattr(layer, "weight") or list(layer.weight.shape) != shape:
        raise EdgetierError(f"cannot restore {what} layer {name!r}: the model has no layer of shape {shape} there",
                            where=where, fix="restore on a copy of the model the stage was applied to")
    return layer


def replace_layer(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put `layer` where the submodule `name` (dotted path) is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, layer)
