"""Label-free distillation for static int8: train a float model's weights so its int8 file keeps the teacher's answers.

Rounding every weight to int8 and every activation to the calibrated int8 grid moves a pretrained
model's outputs; calibration, equalization, bias correction and learned rounding each cut part of
that error, layer by layer. What is left is removed end to end here, with no labels: the model runs
with its int8 rounding simulated (weights on the exporters' symmetric grid, scale `max|w| / 127`
per output channel, straight-through gradients; every activation tensor the int8 file rounds, on
an asymmetric int8 grid spanning its calibrated range) and is trained to give the teacher's (the
float model's) outputs on unlabeled inputs: KL divergence of the softmax plus a small MSE on the
outputs themselves (Hinton et al. 2015; quantization-aware distillation as in Mishra & Marr 2018,
"Apprentice"). The weights are written back on the int8 grid, so onnxruntime's quantizer (which
recomputes `max|w| / 127`, the same scale) stores exactly the trained integers; the activation
ranges in the file are calibrated again by the exporter as usual.

BatchNorm is folded first (folding afterwards would move the weights off the grid). The
activations rounded are those the QDQ file rounds (`simulate_int8`), at percentile ranges of
their float values on the calibration inputs, like `export.calibrate`'s percentile method, fixed
during training.

Measured on EfficientNet-Lite0 (ImageNet weights, `tests/benchmarks/test_ptq.py`): see that file.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from compress.core.errors import EdgetierError
from compress.quant.equalize import feed_with_hooks
from compress.quant.learned_round import fold_batchnorm

__all__ = ["Int8Distillation", "distill_int8", "simulate_int8"]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
# values kept per layer to estimate its input percentiles: enough for the 99.999th percentile of a
# layer's inputs to rest on ~5 values, small enough for ~100 layers in memory (~200 MB)
_SAMPLES_PER_LAYER = 500_000


@dataclass(frozen=True)
class Int8Distillation:
    """What `distill_int8` did: steps, and the simulated int8 model's distance to the teacher on `calib_x`
    before and after (logit rms; top-1 agreement, meaningful for classifiers)."""

    steps: int
    layers: int
    activations: int  # activation tensors rounded in the simulation
    rms_before: float
    rms_after: float
    top1_before: float
    top1_after: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class _WeightInt8(nn.Module):
    """Symmetric int8 fake quantization of a weight, one scale per output channel (or per tensor), STE gradients."""

    def __init__(self, per_channel: bool) -> None:
        super().__init__()
        self.per_channel = per_channel

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.flatten(1)
        amax = flat.abs().amax(1) if self.per_channel else flat.abs().amax().expand(len(flat))
        scale = (amax.detach() / 127).clamp_min(torch.finfo(w.dtype).tiny)
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(len(scale), dtype=torch.int32,
                                                                            device=w.device), 0, -127, 127)


class _ActInt8(nn.Module):
    """One activation tensor's int8 rounding: first records a sample of its values (`observe`), then rounds
    it to the asymmetric int8 grid spanning the percentile range of what it saw (`fix`)."""

    def __init__(self, budget: int, generator: torch.Generator) -> None:
        super().__init__()
        self.budget, self.generator = budget, generator
        self.seen: list[torch.Tensor] | None = []
        self.range: tuple[float, float] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            flat = x.detach().flatten()
            take = min(len(flat), self.budget)
            self.seen.append(flat[torch.randint(len(flat), (take,), generator=self.generator)]
                             if take < len(flat) else flat.clone())
            return x
        if self.range is None:
            return x  # never reached during calibration: left in float
        low, high = self.range
        scale = max(high - low, 1e-8) / 255
        zero = int(min(max(round(-128 - low / scale), -128), 127))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)

    def fix(self, percentile: float) -> None:
        if self.seen:
            v = torch.cat(self.seen).double()
            q = torch.quantile(v, torch.tensor([1 - percentile / 100, percentile / 100], dtype=torch.float64))
            self.range = (min(float(q[0]), 0.0), max(float(q[1]), 0.0))
        self.seen = None


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid)
_ADDS = {operator.add, operator.iadd, torch.add}


def _output_points(model: fx.GraphModule) -> list[fx.Node]:
    """The nodes whose output onnxruntime's QDQ quantizer rounds besides the weighted layers' inputs: a Conv /
    Linear's output unless its only reader is an activation (then the activation's output, the next layer's
    input, is the one rounded), and every residual addition's output."""
    points = []
    for node in model.graph.nodes:
        if node.op == "call_module" and isinstance(model.get_submodule(node.target), _WEIGHTED):
            users = list(node.users)
            if not (len(users) == 1 and users[0].op == "call_module"
                    and isinstance(model.get_submodule(users[0].target), _ACTIVATIONS)):
                points.append(node)
        elif node.op == "call_function" and node.target in _ADDS:
            points.append(node)
    return points


def simulate_int8(model: fx.GraphModule, calib_x: np.ndarray, *, percentile: float = 99.999,
                  batch_size: int = 32, seed: int = 0) -> list[_ActInt8]:
    """Round `model`'s activations to int8 in place where the int8 file does (`_output_points`, and the input
    of every Conv / Linear), at ranges measured on `calib_x`: the `100 - percentile` and `percentile`
    percentiles of each tensor (from about `_SAMPLES_PER_LAYER` values), widened to include 0, like
    `export.calibrate`'s percentile method. Returns the rounding modules (their `range`).

    >>> m = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> points = simulate_int8(m, np.random.default_rng(0).normal(size=(64, 4)), percentile=100.0)
    >>> [p.range[0] == 0.0 for p in points]  # the last layer's output, the input, the ReLU's output (>= 0)
    [False, False, True]
    """
    batches = max(math.ceil(len(calib_x) / batch_size), 1)
    gen = torch.Generator().manual_seed(seed)
    modules: list[_ActInt8] = []

    def point() -> _ActInt8:
        modules.append(_ActInt8(_SAMPLES_PER_LAYER // batches + 1, gen))
        return modules[-1]

    for i, node in enumerate(_output_points(model)):
        name = f"int8_output_{i}"
        model.add_module(name, point())
        with model.graph.inserting_after(node):
            rounded = model.graph.call_module(name, (node,))
        node.replace_all_uses_with(rounded, delete_user_cb=lambda user, r=rounded: user is not r)
    model.recompile()
    for layer in [m for m in model.modules() if isinstance(m, _WEIGHTED)]:
        layer.int8_input = point()  # a submodule: moves with the model; removed by _strip with its hook
        layer.int8_hook = layer.register_forward_pre_hook(lambda m, args: (m.int8_input(args[0]), *args[1:]))
    feed_with_hooks(model, {}, calib_x, batch_size=batch_size)
    for m in modules:
        m.fix(percentile)
    return modules


def _distance(student: nn.Module, teacher: nn.Module, x: np.ndarray, batch_size: int) -> tuple[float, float]:
    with torch.no_grad():
        xs = torch.from_numpy(np.asarray(x, np.float32))
        s = torch.cat([student(xs[i:i + batch_size]) for i in range(0, len(xs), batch_size)])
        t = torch.cat([teacher(xs[i:i + batch_size]) for i in range(0, len(xs), batch_size)])
    s, t = s.flatten(1), t.flatten(1)
    return float((s - t).pow(2).mean().sqrt()), float((s.argmax(1) == t.argmax(1)).float().mean())


def distill_int8(model: nn.Module, inputs: np.ndarray | Callable[[int], np.ndarray], calib_x: np.ndarray, *,
                 teacher: nn.Module | None = None, steps: int = 300, lr: float = 2e-5, batch_size: int = 16,
                 per_channel: bool = True, percentile: float = 99.999, mse_weight: float = 0.1, seed: int = 0,
                 progress: Callable[[int, float], None] | None = None) -> tuple[nn.Module, Int8Distillation]:
    """`(model', report)`: BatchNorm folded, weights trained under simulated int8 to match `teacher`, on the int8 grid.

    `inputs` are unlabeled training inputs: an array (batches drawn at random) or a function
    `pool(i)` returning a fresh array, called every 25 steps (e.g. new random crops). `calib_x`
    fixes the simulated activation ranges and measures the report. `teacher` defaults to a copy of
    `model` as given. The model's output must be `[batch, classes]` logits (or any tensor: the
    KL term is taken over its flattened last axes). Export `model'` and quantize it with the usual
    int8 quantizer (`export.quantize`): it keeps the trained integers.

    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    >>> x = torch.randn(64, 3, 6, 6).numpy()
    >>> q, report = distill_int8(m.eval(), x, x[:32], steps=20, lr=1e-3)
    >>> report.steps, report.layers
    (20, 2)
    """
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise EdgetierError(f"need steps >= 0, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}",
                            where="distill_int8", fix="pass e.g. steps=300, batch_size=16, lr=2e-5")
    calib_x = np.asarray(calib_x, np.float32)
    if len(calib_x) == 0:
        raise EdgetierError("calibration inputs are empty", where="distill_int8",
                            fix="pass a few hundred unlabeled inputs as calib_x")
    teacher = copy.deepcopy(model) if teacher is None else teacher
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = fold_batchnorm(copy.deepcopy(model)).eval()
    points = simulate_int8(student, calib_x, percentile=percentile)
    layers = [m for m in student.modules() if isinstance(m, _WEIGHTED)]
    for m in layers:
        parametrize.register_parametrization(m, "weight", _WeightInt8(per_channel))
    try:
        rms_before, top1_before = _distance(student, teacher, calib_x, batch_size * 2)
        params = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
        rng = np.random.default_rng(seed)
        pool = None if callable(inputs) else np.asarray(inputs, np.float32)
        for step in range(steps):
            if callable(inputs) and step % 25 == 0:
                pool = np.asarray(inputs(step // 25), np.float32)
            x = torch.from_numpy(pool[rng.integers(len(pool), size=batch_size)])
            with torch.no_grad():
                t = teacher(x).flatten(1)
            s = student(x).flatten(1)
            loss = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean") \
                + mse_weight * F.mse_loss(s, t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(step, float(loss.detach()))
        rms_after, top1_after = _distance(student, teacher, calib_x, batch_size * 2)
    finally:
        for m in layers:  # the weights as the int8 file will hold them, the activations float again
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        _strip(student)
    return student, Int8Distillation(steps, len(layers), len(points), rms_before, rms_after, top1_before, top1_after)


def _strip(model: fx.GraphModule) -> None:
    """Remove `simulate_int8`'s rounding: the output points from the graph, the input hooks and modules."""
    for node in list(model.graph.nodes):
        if node.op == "call_module" and isinstance(model.get_submodule(node.target), _ActInt8):
            node.replace_all_uses_with(node.args[0])
            model.graph.erase_node(node)
            delattr(model, node.target)
    model.recompile()
    for m in model.modules():
        if isinstance(getattr(m, "int8_input", None), _ActInt8):
            m.int8_hook.remove()
            del m.int8_input, m.int8_hook
