"""What a per-layer bit choice costs, in the unit of the budget a variant sets.

- `weights_kb`: KiB of the quantized layers' weights *as stored* in the exported file
  (`precision.storage_bits`: 2, 4 or 8 bits per weight; 3 bits cost 4, 5-7 bits cost 8);
- `avg_bits`: the parameter-weighted mean of the nominal bit widths;
- `latency_ms`: a per-layer roofline on the target, summed, plus the target's fixed overhead:
  each layer takes `max(MACs / (throughput[precision] · efficiency), weight bytes / bandwidth)`.
  The precision is `int4` when the layer's weights and activations have ≤ 4 bits and the target
  lists int4; otherwise `int8` (low-bit weights unpacked to int8), or `fp32` when activations stay
  float. Activations' memory traffic and unquantized layers are not counted: they do not depend
  on the choice.
Scales, biases and BatchNorm parameters are not counted in any budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from compress.core.measure import count_macs
from compress.quant.precision import precision_for, storage_bits
from compress.targets import Target


class Budget(BaseModel):
    """Exactly one of: KiB of stored weights, mean bits per weight, or estimated latency on the target.

    >>> Budget(weights_kb=64).kind, Budget(avg_bits=4.5).value
    ('weights_kb', 4.5)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights_kb: float | None = Field(None, gt=0, description="KiB of the quantized layers' weights as stored on disk")
    avg_bits: float | None = Field(None, gt=0, description="parameter-weighted mean weight bits")
    latency_ms: float | None = Field(None, gt=0, description="estimated batch-1 latency on the variant's target")

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [k for k in ("weights_kb", "avg_bits", "latency_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of weights_kb, avg_bits, latency_ms (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("weights_kb", "avg_bits", "latency_ms") if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))


@dataclass(frozen=True)
class LayerStats:
    """A layer's weight elements and its MACs per inference (batch 1)."""

    params: int
    macs: int


@torch.no_grad()
def layer_stats(model: nn.Module, names: list[str], example: torch.Tensor | None) -> dict[str, LayerStats]:
    """Weight elements of each layer and, when `example` (batch 1) is given, its MACs.

    >>> stats = layer_stats(nn.Sequential(nn.Linear(4, 3)), ["0"], torch.zeros(1, 4))
    >>> stats["0"]
    LayerStats(params=12, macs=12)
    """
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    if example is not None:
        def record(name: str):
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:  # None: keep the input as is
                shapes.setdefault(name, tuple(args[0].shape))
            return hook

        handles = [modules[n].register_forward_pre_hook(record(n)) for n in names]
        was_training = model.training
        model.eval()
        try:
            model(example[:1])
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
    return {n: LayerStats(params=modules[n].weight.numel(),
                          macs=count_macs(modules[n], (torch.zeros(shapes[n]),)) if n in shapes else 0)
            for n in names}


def option_cost(budget: Budget, stats: LayerStats, bits: int, *, target: Target | None, act_bits: int | None) -> float:
    """What giving this layer `bits`-bit weights costs, in the budget's unit.

    >>> option_cost(Budget(weights_kb=1), LayerStats(params=2048, macs=0), 4, target=None, act_bits=8)
    1.0
    """
    if budget.kind == "weights_kb":
        return stats.params * storage_bits(bits) / 8 / 1024
    if budget.kind == "avg_bits":
        return float(stats.params * bits)
    if target is None:
        raise ValueError("a latency budget needs a target")
    compute = target.compute
    precision = compute_precision(bits, act_bits, target)
    compute_ms = stats.macs / (compute.throughput_gmacs[precision] * 1e9 * compute.efficiency) * 1e3
    memory_ms = stats.params * storage_bits(bits) / 8 / (compute.memory_bandwidth_gbs * 1e9) * 1e3
    return max(compute_ms, memory_ms)


def compute_precision(bits: int, act_bits: int | None, target: Target) -> str:
    """The precision a layer with `bits`-bit weights runs at on `target` (see the module docstring)."""
    runs = target.compute.throughput_gmacs
    fallback = "int8" if "int8" in runs else next(iter(runs))
    if act_bits is None:
        return "fp32" if "fp32" in runs else fallback
    wanted = precision_for(max(bits, act_bits))
    return wanted if wanted in runs else fallback


def budget_capacity(budget: Budget, stats: dict[str, LayerStats], target: Target | None) -> float:
    """The budget in the unit `option_cost` sums to: `avg_bits` times the parameters; latency minus overhead."""
    if budget.kind == "avg_bits":
        return budget.value * sum(s.params for s in stats.values())
    if budget.kind == "latency_ms" and target is not None:
        return budget.value - target.compute.overhead_ms
    return budget.value
