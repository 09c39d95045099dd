"""What a candidate costs on the target (params, weight bytes, MACs, roofline latency), checked
against the budget before it is trained; and how an NNI sample maps to an architecture.

Kept free of NNI so that recipe checks (`NASConfig.check_model`) do not import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from compress.core.errors import EdgetierError
from compress.core.measure import activation_bytes, count_macs, count_params
from compress.nas.arch import Arch, arch_key, build_arch
from compress.nas.config import Budget, SpaceSpec
from compress.targets import Target
from compress.targets.latency import estimate_latency

DIMS = ("depth", "width_mult", "kernel", "expansion")
STAGES = 3
BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1}


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple - 1e-9)) * multiple)


def arch_from_sample(spec: SpaceSpec, sample: dict[str, Any], *, channel_multiple: int = 1) -> Arch:
    """The architecture of an NNI sample ``{"stage1_depth": 2, ...}``.

    >>> arch = arch_from_sample(SpaceSpec(width=32), {f"stage{i}_{d}": v for i in (1, 2, 3)
    ...     for d, v in (("depth", 1), ("width_mult", 0.5), ("kernel", 3), ("expansion", 0.5))}, channel_multiple=8)
    >>> arch["stem"], arch["stages"][0]
    (16, {'depth': 1, 'width': 16, 'mid': 8, 'kernel': 3})
    """
    stages = []
    for i in range(1, STAGES + 1):
        width = _round_up(spec.width * sample[f"stage{i}_width_mult"], channel_multiple)
        stages.append({"depth": int(sample[f"stage{i}_depth"]), "width": width,
                       "mid": _round_up(width * sample[f"stage{i}_expansion"], channel_multiple),
                       "kernel": int(sample[f"stage{i}_kernel"])})
    return {"family": spec.family, "stem": stages[0]["width"], "stages": stages}


def smallest_sample(spec: SpaceSpec) -> dict[str, Any]:
    """Every choice at its smallest: the cheapest candidate, since cost grows with each dimension."""
    return {f"stage{i}_{d}": min(getattr(spec, d)) for i in range(1, STAGES + 1) for d in DIMS}


def smallest_arch(spec: SpaceSpec, *, channel_multiple: int = 1) -> Arch:
    return arch_from_sample(spec, smallest_sample(spec), channel_multiple=channel_multiple)


@dataclass(frozen=True)
class Cost:
    """What a candidate costs on the target; `reason` says which limit it breaks (None: feasible)."""

    params: int
    bytes: int
    macs: int
    latency_ms: float | None
    reason: str | None = None

    @property
    def feasible(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "feasible": self.feasible}


class CostModel:
    """Parameters, weight bytes, MACs and the target's roofline latency of an architecture, checked
    against a `Budget` (bytes default to the target's storage budget). Cached per architecture."""

    def __init__(self, budget: Budget, target: Target | None, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        if budget.max_latency_ms is not None and target is None:
            raise EdgetierError("budget.max_latency_ms needs a target to estimate latency on", where="with.budget",
                                fix="pass target=... (recipes always have one) or drop max_latency_ms")
        self.budget, self.target = budget, target
        self.input_shape, self.num_classes = input_shape, num_classes
        self.max_bytes = (budget.max_kb * 1024 if budget.max_kb is not None
                          else target.memory.storage_kb * 1024 if target is not None else None)
        self.cache: dict[str, Cost] = {}

    def __call__(self, arch: Arch) -> Cost:
        key = arch_key(arch)
        if key not in self.cache:
            self.cache[key] = self._measure(arch)
        return self.cache[key]

    def latency_of(self, model: nn.Module) -> float | None:
        """The roofline latency of any model (not only a candidate) under this budget's precision."""
        precision = self.budget.precision
        if self.target is None or precision not in self.target.compute.throughput_gmacs:
            return None
        inputs = (torch.zeros(1, *self.input_shape),)
        act = activation_bytes(model, inputs, bytes_per_element=BYTES_PER_WEIGHT[precision])
        return estimate_latency(self.target, macs=count_macs(model, inputs),
                                weight_bytes=count_params(model) * BYTES_PER_WEIGHT[precision],
                                activation_bytes=act, precision=precision).ms

    def _measure(self, arch: Arch) -> Cost:
        model = build_arch(arch, input_shape=self.input_shape, num_classes=self.num_classes, seed=0)
        params, macs = count_params(model), count_macs(model, model.example_inputs())
        nbytes = params * BYTES_PER_WEIGHT[self.budget.precision]
        latency = self.latency_of(model)
        b = self.budget
        reasons = []
        if self.max_bytes is not None and nbytes > self.max_bytes:
            reasons.append(f"{nbytes / 1024:,.1f} KiB > {self.max_bytes / 1024:,.1f} KiB")
        if b.max_latency_ms is not None and latency is not None and latency > b.max_latency_ms:
            reasons.append(f"{latency:.4f} ms > {b.max_latency_ms:.4f} ms estimated")
        if b.max_macs is not None and macs > b.max_macs:
            reasons.append(f"{macs:,} MACs > {b.max_macs:,}")
        return Cost(params, nbytes, macs, latency, "; ".join(reasons) or None)

    def check_reachable(self, smallest: Arch) -> None:
        """Raise when even the smallest candidate breaks the budget, naming its cost."""
        cost = self(smallest)
        if not cost.feasible:
            latency = f", {cost.latency_ms:.4f} ms estimated" if cost.latency_ms is not None else ""
            raise EdgetierError(
                f"no candidate of the search space meets the budget: the smallest ({arch_key(smallest)}) costs "
                f"{cost.params:,} params, {cost.bytes / 1024:,.1f} KiB at {self.budget.precision}, "
                f"{cost.macs:,} MACs{latency} ({cost.reason})", where="with.budget",
                fix="raise the budget, or allow smaller choices in `space` (width_mult, depth, kernel, expansion)")
