"""Per-layer sensitivity to weight quantization: the loss change when only that layer is quantized.

For each layer and each candidate width, the layer's weights are replaced by exactly what the
QAT quantizer starts from at that width (`compress.quant.layers.quantized_weight`, brevitas'
MSE-initialized scale), the mean cross-entropy on the calibration split is measured, and the
weights are put back. `Δloss(layer, bits) = loss(only that layer quantized) - loss(float model)`.

Why this and not HAWQ-v2's Hutchinson trace (`Ω = Tr(H)/n · ‖Q(W) - W‖²`):
- the trace term is a second-order Taylor estimate that assumes a small perturbation; at 2 bits
  (ternary weights) the perturbation is not small and the quadratic model is far off, while the
  measured delta is exact for the one-layer change it describes;
- it is measured for every candidate width, so it needs no assumption about how the error grows
  with fewer bits, and uses the same quantizer as the QAT that follows;
- it costs one forward pass of the calibration batch per (layer, width) — 30 passes for 10
  layers and 3 widths — where Hutchinson needs tens to hundreds of Hessian-vector products
  (double backward) per layer, with their sampling noise;
- it is deterministic (no random probe vectors).
What both share: the total is taken as the sum of per-layer terms (interactions between layers'
errors are ignored), as HAWQ and HAQ do.

`monotone` turns the measurements into the scores the allocation uses: a negative delta (the
quantized layer scored a lower loss) is sampling noise around a trained minimum, not a gain, so
it counts as 0; and a narrower width is never scored below a wider one. Equal scores then go to
the cheaper width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.quant.layers import quantized_weight

BATCH = 256


def monotone(deltas: dict[int, float]) -> dict[int, float]:
    """Scores from measured deltas: clipped at 0 and non-increasing in the number of bits.

    >>> monotone({2: 0.30, 4: -0.01, 8: 0.002})
    {2: 0.3, 4: 0.002, 8: 0.002}
    """
    out, running = {}, 0.0
    for b in sorted(deltas, reverse=True):
        running = max(running, deltas[b])
        out[b] = running
    return dict(sorted(out.items()))


@torch.no_grad()
def mean_loss(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of `model` (in eval mode) on `(x, y)`."""
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for i in range(0, len(x), BATCH):
            logits = model(torch.from_numpy(np.ascontiguousarray(x[i:i + BATCH])))
            total += float(F.cross_entropy(logits, torch.from_numpy(y[i:i + BATCH]), reduction="sum"))
    finally:
        model.train(was_training)
    return total / max(len(x), 1)


@torch.no_grad()
def loss_sensitivity(model: nn.Module, layers: Sequence[str], bits: Sequence[int], x: np.ndarray, y: np.ndarray, *,
                     per_channel: bool) -> dict[str, dict[int, float]]:
    """`Δloss[layer][bits]` on `(x, y)` when only `layer`'s weights are quantized to `bits`; `model` is unchanged.

    >>> torch.manual_seed(0); model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))  # doctest: +ELLIPSIS
    <...>
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    >>> s = loss_sensitivity(model, ["0", "2"], [2, 8], x, y, per_channel=True)
    >>> all(abs(s[n][8]) < abs(s[n][2]) for n in s)  # 8 bits disturbs the loss less than 2 bits
    True
    """
    modules = dict(model.named_modules())
    base = mean_loss(model, x, y)
    out: dict[str, dict[int, float]] = {}
    for name in layers:
        weight = modules[name].weight
        original = weight.detach().clone()
        out[name] = {}
        try:
            for b in bits:
                weight.copy_(quantized_weight(modules[name], b, per_channel=per_channel))
                out[name][b] = mean_loss(model, x, y) - base
                weight.copy_(original)
        finally:
            weight.copy_(original)
    return out
