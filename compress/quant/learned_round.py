"""Learned rounding of int8 weights (AdaRound, Nagel et al. 2020) from unlabeled calibration inputs.

Rounding each weight to its nearest int8 step is not what keeps a layer's output closest: the
errors of a row add up through the inputs. AdaRound chooses, per weight, floor or ceil of `w / s`
to minimise the layer's output reconstruction error `||(W_q - W) x||^2` on calibration inputs.
Per layer that error is `sum_rows dw^T H dw` with `H = E[x x^T]` the Gram matrix of the layer's
(im2col'd) inputs, so `H` is collected once, in one pass of the float model (fp32 inputs to every
layer), and the optimisation then needs no more forward passes: it runs in seconds per layer on
a CPU. The rounding variable is brevitas' `LearnedRoundHardSigmoid` (AdaRound's rectified
sigmoid), pushed to 0 / 1 by AdaRound's annealed regulariser.

The grid is the one the exporters quantize with: symmetric int8, scale `max|w| / 127` per output
channel (or per tensor), the extreme weight of each channel kept at +-127. The learned weights are
written back as `int * s` in float, so onnxruntime's quantizer (which recomputes `max|w| / 127`,
the same scale) maps them to exactly the learned integers: the int8 file runs the learned
rounding, without a custom writer. BatchNorm is folded first (`fold_batchnorm`), since
folding afterwards would move the weights off the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import EdgetierError
from compress.quant.equalize import feed_with_hooks, quantize_weight

__all__ = ["LayerRounding", "fold_batchnorm", "gram_matrices", "learn_rounding", "learned_rounding"]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
# AdaRound fits each row's rounding to the calibration inputs; with fewer input vectors than ~10x a row's
# length it fits them, not the layer: EfficientNet-Lite0's head conv learned on 16 images (2.5 vectors
# per column) cut the calibration error to 0.31x of nearest rounding but raised held-out error to 1.12x
MIN_SAMPLES_PER_COLUMN = 10


@dataclass(frozen=True)
class LayerRounding:
    """One layer's result: reconstruction error (on the calibration Gram matrix) of nearest vs learned rounding."""

    name: str
    nearest_error: float
    learned_error: float
    flipped: float  # share of weights rounded the other way than nearest
    samples: int    # input vectors the Gram matrix averages; under MIN_SAMPLES_PER_COLUMN x columns: nearest kept


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A `torch.fx.GraphModule` computing `model` with every BatchNorm folded into the Conv/Linear before it.

    brevitas' `MergeBatchNorm` matches layer types exactly (and its own fx `Node`), so it skips
    subclasses such as EfficientNet's `Conv2dStaticSamePadding`; this folds any Conv/Linear
    subclass whose only user is a BatchNorm (eval statistics).

    >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> _ = m[1].running_mean.uniform_(), m[1].weight.data.uniform_()
    >>> f = fold_batchnorm(m)
    >>> x = torch.randn(1, 3, 5, 5)
    >>> any(isinstance(l, nn.BatchNorm2d) for l in f.modules()), bool(torch.allclose(f(x), m(x), atol=1e-5))
    (False, True)
    """
    import copy

    from torch.fx import GraphModule, Tracer

    class _LayersAsLeaves(Tracer):  # keep Conv/Linear subclasses whole (fx would trace into their forward)
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, _WEIGHTED) or super().is_leaf_module(m, qualname)

    root = copy.deepcopy(model).eval()
    try:
        graph = GraphModule(root, _LayersAsLeaves().trace(root))
    except Exception as err:  # torch.fx raises TraceError, TypeError, ... on data-dependent Python code
        raise EdgetierError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''}); folding BatchNorm for equalization, learned "
            "rounding or int8 distillation needs a traceable graph", where=type(model).__name__,
            fix="leave out equalize / learned_rounding / distill for this model (calibration and bias_correction "
                "do not trace it), or pass a model whose forward has no Python control flow on tensors") from None
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not node.args:
            continue
        src = node.args[0]
        layer = modules.get(src.target) if getattr(src, "op", None) == "call_module" else None
        if not isinstance(layer, _WEIGHTED) or len(src.users) > 1 or not bn.track_running_stats:
            continue
        with torch.no_grad():
            gain = (bn.weight if bn.affine else 1) / torch.sqrt(bn.running_var + bn.eps)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
            shift = (bn.bias if bn.affine else 0) - bn.running_mean * gain
            layer.weight.mul_(gain.view(-1, *([1] * (layer.weight.dim() - 1))))
            layer.bias = nn.Parameter(bias * gain + shift)
        node.replace_all_uses_with(src)
        graph.graph.erase_node(node)
        graph.delete_submodule(node.target)
    graph.recompile()
    return graph.train(model.training)


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as `[groups, samples, columns]`: the vectors each output row is dotted with."""
    if isinstance(layer, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if hasattr(layer, "static_padding"):  # EfficientNet's Conv2dStaticSamePadding pads inside its forward
        x = layer.static_padding(x)
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, padding, stride = ((1, layer.kernel_size[0]), (1, layer.dilation[0]),
                                             (0, layer.padding[0]), (1, layer.stride[0]))
    else:
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    if isinstance(padding, str) or layer.padding_mode != "zeros":
        raise ValueError(f"learned rounding supports numeric zero padding, not {padding!r} / {layer.padding_mode}")
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, C*k, L]
    g = layer.groups
    return cols.view(len(x), g, -1, cols.shape[-1]).permute(1, 0, 3, 2).reshape(g, -1, cols.shape[1] // g)


def gram_matrices(model: nn.Module, calib_x: np.ndarray, *,
                  batch_size: int = 4) -> dict[str, tuple[torch.Tensor, int]]:
    """Per Conv/Linear layer, `(E[x x^T], samples)`: the Gram matrix of its inputs on `calib_x` as
    `[groups, columns, columns]` (float64) and how many input vectors (images x positions) it averages."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _WEIGHTED)}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            cols = _columns(layers[name], args[0].detach())
            # float32 products (im2col of an early layer is large), float64 running sum
            sums[name] = sums.get(name, 0) + (cols.transpose(1, 2) @ cols).double()
            counts[name] = counts.get(name, 0) + cols.shape[1]
        return record

    feed_with_hooks(model, {m: hook(n) for n, m in layers.items()}, calib_x, batch_size=batch_size)
    return {name: (sums[name] / counts[name], counts[name]) for name in sums}


def _scale(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    flat = weight.detach().flatten(1).double()
    amax = flat.abs().amax(1, keepdim=True) if per_channel else flat.abs().amax().expand(len(flat), 1)
    return (amax / 127).clamp_min(1e-30)


def _error(dw: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """`sum_rows dw^T H dw` with `dw` `[groups, rows, cols]`, `H` `[groups, cols, cols]`."""
    return ((dw @ gram) * dw).sum()


def learn_rounding(weight: torch.Tensor, gram: torch.Tensor, *, per_channel: bool = True, iterations: int = 400,
                   reg: float = 0.01, lr: float = 0.05) -> tuple[torch.Tensor, float, float, float]:
    """`(weight_q, nearest_error, learned_error, flipped)`: `weight` on the int8 grid with learned rounding.

    `gram` is `E[x x^T]` of the layer's inputs, `[groups, cols, cols]`. The result is `int * scale`
    (float, same shape and scale as nearest rounding) and never has a larger error on `gram` than
    nearest rounding (the nearest integers are returned when learning does not beat them).

    >>> torch.manual_seed(0) and None
    >>> x = torch.randn(512, 64) @ torch.randn(64, 64)      # correlated inputs: rounding errors interact
    >>> w = torch.randn(32, 64)
    >>> wq, nearest, learned, _ = learn_rounding(w, (x.T @ x / 512)[None].double())
    >>> bool(learned < nearest), bool(((wq - w).abs() <= w.abs().amax(1, keepdim=True) / 127 + 1e-6).all())
    (True, True)
    """
    from brevitas.core.function_wrapper.learned_round import LearnedRoundHardSigmoid

    groups = gram.shape[0]
    s = _scale(weight, per_channel)                                   # [out, 1]
    w = weight.detach().flatten(1).double() / s                        # in steps
    nearest = w.round().clamp(-127, 127)
    floor = w.floor()
    pinned = nearest.abs() >= 127  # the extreme weights keep +-127: the exporter recomputes the scale from them

    def as_groups(t: torch.Tensor) -> torch.Tensor:
        return (t * s).view(groups, -1, t.shape[1])

    target = as_groups(w)
    err_nearest = float(_error(as_groups(nearest) - target, gram))
    # the loss in the loop: ||dw F||^2 with F F^T ~= H from H's leading eigenvectors (99.999 % of its
    # trace), in float32: the inputs of deep layers have a low effective rank, so this is several times
    # cheaper than dw H dw^T (1000 x 1280 x 1280 per step for an ImageNet classifier)
    lam, vec = torch.linalg.eigh(gram)
    lam = lam.clamp_min(0)
    energy = lam.flip(-1).cumsum(-1) / lam.sum(-1, keepdim=True).clamp_min(1e-300)
    k = int((energy < 1 - 1e-5).sum(-1).max()) + 1
    factor = (vec[..., -k:] * lam[..., None, -k:].sqrt()).float()       # [groups, cols, k]
    s32, floor32, nearest32, w32 = s.float(), floor.float(), nearest.float(), w.float()
    target32 = (w32 * s32).view(groups, -1, w.shape[1]) @ factor
    sigmoid = LearnedRoundHardSigmoid()  # AdaRound's rectified sigmoid, zeta 1.1, gamma -0.1
    rest = (w - floor).clamp(0.01, 0.99)
    zeta, gamma = sigmoid.learned_round_zeta, sigmoid.learned_round_gamma
    v = (-torch.log((zeta - gamma) / (rest - gamma) - 1)).float().requires_grad_(True)  # h(v) = rest at start
    opt = torch.optim.Adam([v], lr=lr)
    norm = max(float(((nearest32 * s32).view(groups, -1, w.shape[1]) @ factor - target32).pow(2).sum()), 1e-30)
    warmup = iterations // 5
    for it in range(iterations):
        h = sigmoid(v)
        soft = torch.where(pinned, nearest32, (floor32 + h).clamp(-127, 127))
        loss = ((soft * s32).view(groups, -1, w.shape[1]) @ factor - target32).pow(2).sum() / norm
        if it >= warmup:  # AdaRound: no regulariser first, then beta annealed from 20 to 2 pushes h to 0 / 1
            beta = 2 + 18 * (1 - (it - warmup) / max(iterations - warmup - 1, 1))
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).sum() / math.sqrt(h.numel())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        learned = torch.where(pinned, nearest, (floor + (sigmoid(v).double() >= 0.5).double()).clamp(-127, 127))
        err_learned = float(_error(as_groups(learned) - target, gram))
    if err_learned >= err_nearest:
        learned, err_learned = nearest, err_nearest
    flipped = float((learned != nearest).double().mean())
    return (learned * s).view_as(weight).to(weight.dtype), err_nearest, err_learned, flipped


def learned_rounding(model: nn.Module, calib_x: np.ndarray, *, per_channel: bool = True, iterations: int = 400,
                     batch_size: int = 4) -> tuple[nn.Module, list[LayerRounding]]:
    """`(model', per-layer results)`: BatchNorm folded and every Conv/Linear weight on the int8 grid, rounded by AdaRound.

    Label-free: only `calib_x` (inputs, no labels) is used. Export `model'` and quantize it with
    the usual int8 quantizer: it keeps the learned integers (module docstring).

    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    >>> q, layers = learned_rounding(m.eval(), torch.randn(64, 3, 6, 6).numpy(), iterations=50)
    >>> [(r.name, r.samples) for r in layers], all(r.learned_error <= r.nearest_error for r in layers)
    ([('0', 1024), ('4', 64)], True)
    """
    folded = fold_batchnorm(model)
    grams = gram_matrices(folded, calib_x, batch_size=batch_size)
    results = []
    with torch.no_grad():
        for name, layer in folded.named_modules():
            if name not in grams:
                continue
            gram, samples = grams[name]
            if samples < MIN_SAMPLES_PER_COLUMN * gram.shape[-1]:  # too few inputs to learn from: nearest
                nearest = quantize_weight(layer.weight, per_channel=per_channel)
                err = float(_error((nearest - layer.weight).double().flatten(1)
                                   .view(gram.shape[0], -1, gram.shape[-1]), gram))
                layer.weight.copy_(nearest)  # on the grid like the others: the int8 file holds these integers
                results.append(LayerRounding(name, err, err, 0.0, samples))
                continue
            with torch.enable_grad():
                wq, nearest, learned, flipped = learn_rounding(layer.weight, gram, per_channel=per_channel,
                                                               iterations=iterations)
            layer.weight.copy_(wq)
            results.append(LayerRounding(name, nearest, learned, flipped, samples))
    return folded, results
