"""Per-layer sensitivity to weight quantization: how far the model's output moves when only that
layer is quantized.

For each layer and each candidate width, the layer's weights are replaced by exactly what the
QAT quantizer starts from at that width (`compress.quant.layers.quantized_weight`, brevitas'
MSE-initialized scale), the model runs on the sensitivity samples, and the weights are put back.
Two numbers are measured in that one pass:

- `kl` — the criterion the allocation uses — the mean over samples of
  `KL(softmax(float logits) || softmax(quantized logits))`, as ZeroQ (Cai et al. 2020) does;
- `loss_delta` — `loss(only that layer quantized) - loss(float model)` — reported only.

Why the KL and not the loss delta: on a trained minimum the loss is flat to first order, so the
loss delta of a real perturbation is a small difference of two large sums whose sign float
rounding and the choice of samples flip (a 2-bit `head.fc` measured +0.02 on one machine and
-0.005 on another). The KL is a sum of non-negative terms (Gibbs), zero only when the output is
unchanged, needs no labels, and grows with the perturbation whatever the loss does; it is a
per-sample average, so it is the average over calibration batches too.

Why not HAWQ-v2's Hutchinson trace (`Ω = Tr(H)/n · ‖Q(W) - W‖²`): it is a second-order Taylor
estimate that assumes a small perturbation (at 2 bits the weights are ternary and it is not),
it needs tens of double-backward Hessian-vector products per layer with their sampling noise,
and its trace estimate can itself come out negative on a non-convex model. The KL is exact for
the one-layer change it describes, deterministic, and costs one forward pass per (layer, width).
What both share: the total is taken as the sum of per-layer terms; `mixed_precision` therefore
checks the jointly quantized candidates on validation before it keeps one.

`monotone` makes the scores the allocation uses non-increasing in bits (a narrower width never
scores below a wider one), so equal scores go to the cheaper width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.quant.layers import quantized_weight

BATCH = 256


@dataclass(frozen=True)
class Sensitivity:
    """Per layer and width: the output KL (the criterion) and the loss change (reported only)."""

    kl: dict[str, dict[int, float]]
    loss_delta: dict[str, dict[int, float]]


def monotone(scores: dict[int, float]) -> dict[int, float]:
    """Scores clipped at 0 and non-increasing in the number of bits.

    >>> monotone({2: 0.30, 4: -0.01, 8: 0.002})
    {2: 0.3, 4: 0.002, 8: 0.002}
    """
    out, running = {}, 0.0
    for b in sorted(scores, reverse=True):
        running = max(running, scores[b])
        out[b] = running
    return dict(sorted(out.items()))


@torch.no_grad()
def logits(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    """`model`'s outputs (in eval mode) on `x`, in batches."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(torch.from_numpy(np.ascontiguousarray(x[i:i + BATCH]))) for i in range(0, len(x), BATCH)])
    finally:
        model.train(was_training)


def output_kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over samples of `KL(softmax(reference) || softmax(other))`; ≥ 0 (rounding's tiny negatives are clipped).

    >>> z = torch.tensor([[2.0, 0.0, -1.0]])
    >>> output_kl(z, z), output_kl(z, z.flip(1)) > 0
    (0.0, True)
    """
    kl = F.kl_div(F.log_softmax(other.double(), dim=-1), F.log_softmax(reference.double(), dim=-1),
                  reduction="batchmean", log_target=True)
    return max(float(kl), 0.0)


@torch.no_grad()
def measure_sensitivity(model: nn.Module, layers: Sequence[str], bits: Sequence[int], x: np.ndarray, y: np.ndarray, *,
                        per_channel: bool) -> Sensitivity:
    """Output KL and loss change on `(x, y)` when only `layer`'s weights are quantized to `bits`; `model` is unchanged.

    >>> torch.manual_seed(0); model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))  # doctest: +ELLIPSIS
    <...>
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    >>> s = measure_sensitivity(model, ["0", "2"], [2, 8], x, y, per_channel=True)
    >>> all(s.kl[n][8] < s.kl[n][2] for n in s.kl)  # 8 bits moves the output less than 2 bits
    True
    """
    modules = dict(model.named_modules())
    target = torch.from_numpy(y)
    base = logits(model, x)
    base_loss = float(F.cross_entropy(base, target))
    kl: dict[str, dict[int, float]] = {}
    delta: dict[str, dict[int, float]] = {}
    for name in layers:
        weight = modules[name].weight
        original = weight.detach().clone()
        kl[name], delta[name] = {}, {}
        try:
            for b in bits:
                weight.copy_(quantized_weight(modules[name], b, per_channel=per_channel))
                out = logits(model, x)
                kl[name][b] = output_kl(base, out)
                delta[name][b] = float(F.cross_entropy(out, target)) - base_loss
                weight.copy_(original)
        finally:
            weight.copy_(original)
    return Sensitivity(kl=kl, loss_delta=delta)
