"""Label-free transforms that prepare a float model for int8: BatchNorm folding, cross-layer
equalization (CLE) and bias correction (Nagel et al. 2019, "Data-Free Quantization").

- `equalize` folds BatchNorm into the preceding Conv/Linear and rescales the output channels of
  one layer and the input channels of the next so their per-channel weight ranges match, across
  ReLU (scale-equivariant: relu(s*x) = s*relu(x) for s > 0), with brevitas' `EqualizeGraph`. The
  fp32 function is unchanged; per-tensor / per-channel int8 weights lose less. ReLU6 is not
  scale-equivariant, so brevitas does not equalize across it (turning it into ReLU, as the paper
  does, changes the fp32 answers: measured 3 % top-1 agreement on EfficientNet-Lite0).
- `bias_correct` removes the mean output shift that rounding the weights to int8 causes:
  E[(W_q - W) x] = (W_q - W) E[x], estimated from unlabeled calibration inputs, is subtracted from
  the bias. The int8 grid it assumes is onnxruntime's / PT2E's symmetric one (scale max|w| / 127).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["bias_correct", "equalize", "feed_with_hooks", "quantize_weight"]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def feed_with_hooks(model: nn.Module, hooks: dict[nn.Module, Callable[..., None]], calib_x: np.ndarray, *,
                    batch_size: int) -> None:
    """Run `calib_x` through `model` in eval mode, without gradients, with `hooks` as forward pre-hooks on their
    modules; the hooks are removed and the training flag restored afterwards, even on error.

    >>> seen = []
    >>> m = nn.Sequential(nn.Linear(3, 2))
    >>> feed_with_hooks(m, {m[0]: lambda _m, args: seen.append(args[0].shape[0])}, np.zeros((5, 3)), batch_size=2)
    >>> seen, len(m[0]._forward_pre_hooks)
    ([2, 2, 1], 0)
    """
    handles = [module.register_forward_pre_hook(hook) for module, hook in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            xs = torch.from_numpy(np.asarray(calib_x, np.float32))
            for i in range(0, len(xs), batch_size):
                model(xs[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def equalize(model: nn.Module, *, iterations: int = 20) -> tuple[nn.Module, list[tuple[str, ...]]]:
    """`(model', pairs)`: BatchNorm folded and weights equalized across ReLU; `pairs` names the regions.

    The result is a `torch.fx.GraphModule` computing the same function (to float rounding).

    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    >>> x = torch.randn(2, 3, 6, 6)
    >>> eq, pairs = equalize(m)
    >>> pairs, bool(torch.allclose(eq(x), m(x), atol=1e-5))
    ([('0', '3')], True)
    """
    import warnings

    from brevitas.graph.equalize import EqualizeGraph
    from brevitas.graph.standardize import MeanMethodToAdaptiveAvgPool2d, TorchFunctionalToModule

    from compress.quant.learned_round import fold_batchnorm

    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # brevitas warns that fast_hadamard_transform (CUDA) is absent
        # our fold, not brevitas' MergeBatchNorm: that one matches brevitas' own fx nodes only, so on a
        # torch.fx trace it folded nothing (CLE then paired BatchNorm with the next conv)
        graph = fold_batchnorm(model)
        graph = TorchFunctionalToModule().apply(graph)
        graph = MeanMethodToAdaptiveAvgPool2d().apply(graph)
        graph, regions = EqualizeGraph(iterations=iterations, return_regions=True).apply(graph)
    pairs = [tuple(sorted(r.name_to_module)) if hasattr(r, "name_to_module") else tuple(map(str, r))
             for r in regions]
    graph.train(was_training)
    return graph, pairs


def quantize_weight(weight: torch.Tensor, *, per_channel: bool = True) -> torch.Tensor:
    """`weight` rounded to symmetric int8 (scale max|w| / 127, per output channel or per tensor), as float.

    >>> w = torch.tensor([[1.0, 0.3], [0.02, -0.01]])
    >>> bool(((quantize_weight(w) - w).abs() <= w.abs().amax(1, keepdim=True) / 254 + 1e-9).all())  # half a step
    True
    """
    flat = weight.detach().flatten(1)
    amax = flat.abs().amax(1) if per_channel else flat.abs().amax().expand(len(flat))
    scale = (amax / 127).clamp_min(torch.finfo(weight.dtype).tiny).view(-1, *([1] * (weight.dim() - 1)))
    return (weight.detach() / scale).round().clamp(-127, 127) * scale


def bias_correct(model: nn.Module, calib_x: np.ndarray, *, per_channel: bool = True,
                 batch_size: int = 64) -> list[str]:
    """Subtract each Conv/Linear's expected int8 weight-rounding error from its bias, in place; the names.

    E[x] per input channel is measured on `calib_x` in the float model (one pass, hooks on the
    layers' inputs); for a convolution the kernel's spatial sum multiplies it (padding at the
    borders is ignored, which the estimate absorbs as a small error). Layers without a bias get one.

    >>> torch.manual_seed(0) and None
    >>> lin = nn.Linear(16, 4)
    >>> x = (torch.randn(256, 16) + 3).numpy()     # inputs with a large mean: rounding errors add up
    >>> bias_correct(nn.Sequential(lin), x)
    ['0']
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _WEIGHTED)}
    sums: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}

    def hook(name: str):
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            dims = [0, *range(2, x.dim())] if x.dim() > 2 else [0]  # mean over batch and positions, per channel
            if isinstance(layers[name], nn.Linear):
                dims = list(range(x.dim() - 1))
            sums[name] = sums.get(name, 0) + x.sum(dims)
            count[name] = count.get(name, 0) + int(np.prod([x.shape[d] for d in dims]))
        return record

    feed_with_hooks(model, {m: hook(n) for n, m in layers.items()}, calib_x, batch_size=batch_size)
    corrected = []
    with torch.no_grad():
        for name, layer in layers.items():
            if name not in sums:
                continue  # not on the forward path of this input
            mean_in = sums[name] / count[name]
            err = quantize_weight(layer.weight, per_channel=per_channel) - layer.weight
            groups = getattr(layer, "groups", 1)
            per_in = err.flatten(2).sum(2) if err.dim() > 2 else err  # [out, in/groups]
            if groups > 1:  # each output channel sees its own group's input channels
                out_per_group = per_in.shape[0] // groups
                mean_in = mean_in.view(groups, -1).repeat_interleave(out_per_group, 0)
                shift = (per_in * mean_in).sum(1)
            else:
                shift = per_in @ mean_in
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
            layer.bias -= shift
            corrected.append(name)
    return corrected
