"""`mixed_precision`: per-layer bit widths chosen under the variant's budget, then QAT.

1. Sensitivity: how far the output moves (mean KL divergence) on held-out samples when only
   one layer is quantized, for every layer and every allowed width (`compress.quant.sensitivity`
   says why this and not the loss change or a Hessian trace).
2. Allocation: one width per layer from `bits` (minus what the target cannot run, see
   `compress.quant.precision`), minimizing the summed sensitivity under `budget` — KiB of stored
   weights, mean bits, or estimated latency on the target (`compress.quant.budget`) — solved
   exactly as a 0/1 program (`compress.quant.allocate`). The report lists the bits chosen per
   layer and the sensitivity–size Pareto curve.
3. Candidates — the best uniform width that fits, the sensitivity optimum and a few Pareto
   points within budget — are each quantized jointly, fine-tuned briefly and compared on
   validation; a mix is kept only when it beats uniform there by more than noise (one standard
   error of the paired difference, or `margin`; `compress.quant.candidates`), else uniform is kept,
   so the stage never keeps a mix that loses to uniform on validation. The report lists each
   candidate.
   The uniform candidate is the widest width the target runs that fits the budget, from the
   smallest to the largest of `bits` even where `bits` skips it (`uniform: range`, the default):
   with `bits: [2, 4, 8]` and `avg_bits: 3` that is uniform 3-bit, which is what `qat` at
   `weight_bits: 3` would give under the same budget, so the stage never keeps less than that on
   validation. (Measured on digits, issue 14: 2/4/8 mixes at 2.5-3 bits had a higher validation
   loss than uniform 3-bit in 5 of 6 seeds — a 2-bit layer's error is far larger than a 3-bit
   one's, a 4-bit layer's only somewhat smaller.) `uniform: listed` keeps the candidate to `bits`.
4. The kept widths are applied exactly as `qat` applies its own (same layers, activation
   quantization and export), and the stage's `train` block fine-tunes them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, ExportPlan, Result
from compress.core.train import TrainSpec
from compress.quant import precision
from compress.quant.allocate import Allocation, allocate, cost_range, pareto
from compress.quant.budget import Budget, LayerStats, budget_capacity, layer_stats, option_cost
from compress.quant.candidates import Candidate, best, candidates, trial
from compress.quant.qat import (
    check_bits_range,
    quant_report,
    quant_state,
    quantizable_layers,
    quantize,
    restore_quant,
)
from compress.quant.sensitivity import logits, measure_sensitivity, monotone
from compress.targets import Target
from export.plot import pareto_plot

SENSITIVITY = ("mean KL divergence of the output (float model || only that layer's weights quantized) on "
               "calibration + validation samples, per layer and width, made non-increasing in bits "
               "(ZeroQ's criterion; compress.quant.sensitivity says why not the loss change)")


class MixedPrecisionConfig(TechniqueConfig):
    """Per-layer weight bits from `bits`, chosen to minimize summed sensitivity under `budget`.

    >>> MixedPrecisionConfig(bits=[8, 2, 4], budget={"avg_bits": 4}).bits
    (2, 4, 8)
    >>> MixedPrecisionConfig(bits=[4, 9], budget={"avg_bits": 4})
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for MixedPrecisionConfig
    bits
      Value error, bits must be between 2 and 8 bits, got 9 ...
    """

    kind: Literal["mixed_precision"] = "mixed_precision"
    bits: tuple[int, ...] = Field((2, 4, 8), min_length=1, description="candidate weight widths (2-8)")
    budget: Budget | None = Field(None, description="exactly one of weights_kb, avg_bits, latency_ms; default: "
                                  "the target's storage budget (memory.storage_kb) as weights_kb")
    act_bits: int | None = Field(None, description="activation bits (2-8); default: 8 when the target runs int8")
    weight_only: bool = Field(False, description="quantize weights only; activations stay float")
    per_channel: bool = Field(True, description="one weight scale per output channel (else one per tensor)")
    calib_samples: int = Field(256, gt=0, le=100_000, description="calibration samples that initialize the activation scales")
    sensitivity_samples: int = Field(1024, gt=0, le=100_000, description="samples (calibration split, then validation split) "
                                     "on which each layer's loss change is measured")
    trials: int = Field(2, ge=0, le=1000, description="Pareto points within budget tried besides the best uniform width and "
                        "the sensitivity optimum")
    trial_epochs: int = Field(1, ge=0, le=1000, description="epochs of QAT each candidate gets before they are compared on "
                              "validation (0: compared right after quantization). Set it to the stage's own epochs for a "
                              "comparison that mirrors the training the kept allocation gets: one epoch under-ranks a "
                              "2-bit allocation that recovers slowly (measured on MNIST-1D at avg_bits 3)")
    uniform: Literal["range", "listed"] = Field("range", description="the uniform candidate's width: the widest that "
                                                 "fits the budget and the target runs, between min(bits) and max(bits) "
                                                 "('range') or among bits only ('listed')")
    margin: float | None = Field(None, ge=0, le=1, description="how much more accurate on validation than the "
                                 "uniform candidate a mix must be to be kept; default: more than one standard error "
                                 "of the paired difference on the validation samples (compress.quant.candidates)")
    pareto_points: int = Field(12, ge=2, le=100, description="budgets sampled for the sensitivity-size curve")

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for b in value:
            check_bits_range(b, "bits")
        return tuple(sorted(set(value)))

    @field_validator("act_bits")
    @classmethod
    def _act_bits(cls, value: int | None) -> int | None:
        return check_bits_range(value, "act_bits")

    def check_target(self, target: Target) -> None:
        if not precision.allowed_weight_bits(self.bits, target):
            precision.check_weight_bits(self.bits, target, what="mixed_precision bits")
        if not self.weight_only:
            precision.check_act_bits(self.resolved_act_bits(target), target, what="mixed_precision act_bits")
        allowed = precision.allowed_weight_bits(self.bits, target)
        budget = self.resolved_budget(target)
        if budget.kind == "avg_bits" and budget.value < allowed[0]:
            raise EdgetierError(f"budget avg_bits {budget.value:g} is below the smallest width allowed on "
                                f"{target.name} ({allowed[0]} bits)", fix=f"set avg_bits to at least {allowed[0]}")

    def check_model(self, model: nn.Module, target: Target | None) -> None:
        names = list(quantizable_layers(model, self.targets, self.ignore, where="mixed_precision: targets"))
        example = None
        if self.resolved_budget(target).kind == "latency_ms":
            if not hasattr(model, "example_inputs"):
                return  # checked in apply, where the example inputs are known
            example = model.example_inputs()[0]
        stats = layer_stats(model, names, example)
        _options_or_error(self, stats, {n: {} for n in names}, target)

    def resolved_act_bits(self, target: Target | None) -> int | None:
        return None if self.weight_only else self.act_bits or precision.default_bits(target)

    def resolved_budget(self, target: Target | None) -> Budget:
        """`budget`, or the target's storage budget as KiB of weights (the file also holds scales,
        BatchNorm parameters and the graph, so a budget that matters should be set explicitly)."""
        if self.budget is not None:
            return self.budget
        if target is None:
            raise EdgetierError("mixed_precision has no budget and no target to take one from",
                                where="mixed_precision: budget",
                                fix="set budget: {weights_kb: ...}, {avg_bits: ...} or {latency_ms: ...}, or pass target=")
        return Budget(weights_kb=float(target.memory.storage_kb))


def _options_or_error(cfg: MixedPrecisionConfig, stats: dict[str, LayerStats],
                      sensitivity: dict[str, dict[int, float]], target: Target | None
                      ) -> tuple[dict[str, dict[int, tuple[float, float]]], float]:
    """The option table (cost, sensitivity) and the capacity; an error when the budget is out of reach."""
    allowed = precision.allowed_weight_bits(cfg.bits, target)
    act_bits = cfg.resolved_act_bits(target)
    budget = cfg.resolved_budget(target)
    options = {n: {b: (option_cost(budget, s, b, target=target, act_bits=act_bits), sensitivity[n].get(b, 0.0))
                   for b in allowed} for n, s in stats.items()}
    capacity = budget_capacity(budget, stats, target)
    cheapest = cost_range(options)[0]
    if cheapest > capacity * (1 + 1e-9):
        need = _in_budget_units(budget, cheapest, stats, target)
        raise EdgetierError(
            f"budget {budget.kind} {budget.value:g} cannot be met: with all {len(stats)} quantized layers at "
            f"{allowed[0]} bits (the smallest width allowed{f' on {target.name}' if target else ''}) it is {need:.4g}",
            where="mixed_precision: budget",
            fix=f"raise the budget to at least {need:.4g}, allow fewer bits, or quantize fewer layers")
    return options, capacity


def _uniform(cfg: MixedPrecisionConfig, allowed: list[int], stats: dict[str, LayerStats], budget: Budget,
             capacity: float, target: Target | None, act_bits: int | None) -> int | None:
    """The uniform candidate's width (see `uniform`), or None when no single width fits."""
    widths = range(allowed[0], allowed[-1] + 1) if cfg.uniform == "range" else allowed
    for b in sorted((b for b in widths if precision.weight_bits_ok(b, target)), reverse=True):
        cost = sum(option_cost(budget, s, b, target=target, act_bits=act_bits) for s in stats.values())
        if cost <= capacity * (1 + 1e-9):
            return b
    return None


def _in_budget_units(budget: Budget, cost: float, stats: dict[str, LayerStats], target: Target | None) -> float:
    if budget.kind == "avg_bits":
        return cost / max(sum(s.params for s in stats.values()), 1)
    if budget.kind == "latency_ms" and target is not None:
        return cost + target.compute.overhead_ms
    return cost


def _point(a: Allocation, budget: Budget, stats: dict[str, LayerStats], target: Target | None) -> dict[str, Any]:
    params = sum(s.params for s in stats.values())
    point = {"sensitivity": _sig(a.sensitivity),
             "weights_kb": round(sum(stats[n].params * precision.storage_bits(b) for n, b in a.bits.items()) / 8192, 3),
             "avg_bits": round(sum(stats[n].params * b for n, b in a.bits.items()) / max(params, 1), 3),
             "layers_per_bits": {str(b): sum(1 for v in a.bits.values() if v == b) for b in sorted(set(a.bits.values()))}}
    if budget.kind == "latency_ms":
        point["latency_ms"] = round(_in_budget_units(budget, a.cost, stats, target), 4)
    return point


def _sig(value: float) -> float:
    """`value` to 4 significant digits (KL divergences span 1e-8 to 1).

    >>> _sig(1.234567e-7), _sig(0.0)
    (1.235e-07, 0.0)
    """
    return float(f"{value:.4g}")


def _plot(path: Path, curve: list[dict[str, Any]], chosen: dict[str, Any]) -> Path:
    """The sensitivity-size curve (every point an optimal allocation at its budget), the choice circled."""
    points = [*curve, chosen]
    return pareto_plot(path, points, x="weights_kb", y="sensitivity", label_x="weights (KiB, as stored)",
                       label_y="total sensitivity (output KL)", chosen=len(points) - 1, maximize_y=False,
                       title="mixed precision: sensitivity vs size")


def _sensitivity_data(ctx: Context, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The calibration split, then the validation split, up to `samples` samples."""
    assert ctx.data is not None
    x = np.concatenate([ctx.data.calib.x, ctx.data.val.x])[:samples]
    y = np.concatenate([ctx.data.calib.y, ctx.data.val.y])[:samples]
    return x, y


def _select(model: nn.Module, tried: list[Candidate], apply_bits: Callable[[nn.Module, dict[str, int]], nn.Module],
            ctx: Context, epochs: int, margin: float | None) -> Candidate:
    """Uniform, unless a mix beats it on validation by more than noise after `epochs` of QAT
    (see `compress.quant.candidates`)."""
    assert ctx.data is not None
    val = (ctx.data.val.x, ctx.data.val.y)
    if len(tried) == 1 or not len(val[1]):
        return tried[0] if len(tried) == 1 else next(c for c in tried if c.name == "sensitivity optimum")
    reference = logits(model, val[0])
    spec = (ctx.train or TrainSpec()).model_copy(update={"epochs": epochs})
    for c in tried:
        trial(model, c, apply_bits, val, reference, train=(ctx.data.train.x, ctx.data.train.y), spec=spec,
              seed=ctx.seed)
    return best(tried, margin=margin)


class MixedPrecision(BaseTechnique):
    config_type = MixedPrecisionConfig
    config: MixedPrecisionConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        cfg = self.config
        if ctx.target is not None:
            cfg.check_target(ctx.target)
        if ctx.data is None or not len(ctx.data.calib.x):
            raise EdgetierError("mixed_precision measures each layer's sensitivity on calibration data and got none",
                                where="mixed_precision", fix="pass data=... to compress.apply")
        names = list(quantizable_layers(model, cfg.targets, cfg.ignore, where="mixed_precision: targets"))
        allowed = precision.allowed_weight_bits(cfg.bits, ctx.target)
        x, y = _sensitivity_data(ctx, cfg.sensitivity_samples)
        example = ctx.example_inputs[0] if ctx.example_inputs else torch.from_numpy(np.ascontiguousarray(x[:1]))
        budget = cfg.resolved_budget(ctx.target)
        stats = layer_stats(model, names, example if budget.kind == "latency_ms" else None)
        _options_or_error(cfg, stats, {n: {} for n in names}, ctx.target)  # fail before measuring anything
        act_bits = cfg.resolved_act_bits(ctx.target)
        flat_bits = _uniform(cfg, allowed, stats, budget, budget_capacity(budget, stats, ctx.target), ctx.target,
                             act_bits)
        widths = sorted({*allowed, *([flat_bits] if flat_bits else [])})
        measured = measure_sensitivity(model, names, widths, x, y, per_channel=cfg.per_channel)
        sensitivity = {name: monotone({b: kl[b] for b in allowed}) for name, kl in measured.kl.items()}
        options, capacity = _options_or_error(cfg, stats, sensitivity, ctx.target)
        optimum = allocate(options, capacity)
        assert optimum is not None  # _options_or_error proved the cheapest choice fits
        allocations = pareto(options, points=cfg.pareto_points)
        curve = [_point(a, budget, stats, ctx.target) for a in allocations]
        flat = None if flat_bits is None else Allocation(
            bits=dict.fromkeys(names, flat_bits),
            cost=sum(option_cost(budget, stats[n], flat_bits, target=ctx.target, act_bits=act_bits) for n in names),
            sensitivity=sum(max(measured.kl[n][flat_bits], 0.0) for n in names))

        def apply_bits(m: nn.Module, bits: dict[str, int]) -> nn.Module:
            return quantize(m, bits, ctx, act_bits=act_bits, per_channel=cfg.per_channel,
                            calib_samples=cfg.calib_samples)[0]

        tried = candidates(optimum, allocations, options, capacity, extra=cfg.trials, flat=flat)
        kept = _select(model, tried, apply_bits, ctx, cfg.trial_epochs, cfg.margin)
        chosen = kept.allocation
        model, specs, relus = quantize(model, chosen.bits, ctx, act_bits=act_bits, per_channel=cfg.per_channel,
                                       calib_samples=cfg.calib_samples)
        report = quant_report(model, specs, act_bits, cfg.per_channel)
        for name in names:
            report["layers"][name]["sensitivity"] = {str(b): _sig(v) for b, v in sensitivity[name].items()}
            report["layers"][name]["output_kl_measured"] = {str(b): _sig(v) for b, v in measured.kl[name].items()}
            report["layers"][name]["loss_delta_measured"] = {str(b): round(v, 6)
                                                             for b, v in measured.loss_delta[name].items()}
        report.update({
            "sensitivity_method": SENSITIVITY, "sensitivity_samples": len(x), "allowed_bits": allowed,
            "budget": {budget.kind: budget.value},
            "chosen": {"candidate": kept.name, **_point(chosen, budget, stats, ctx.target)},
            "sensitivity_optimum": _point(optimum, budget, stats, ctx.target),
            "candidates": [{"name": c.name, **_point(c.allocation, budget, stats, ctx.target), **c.measured}
                           for c in tried],
            "pareto": curve,
        })
        if ctx.workdir is not None:  # a recipe run: the plot ships in the bundle and shows in report.md
            report["figures"] = {"pareto.png": str(_plot(ctx.workdir / "pareto.png", curve, report["chosen"]))}
        return Result(model, report, export=ExportPlan(exporter="qcdq", per_channel=cfg.per_channel),
                      state=quant_state(specs, relus, act_bits, cfg.per_channel))

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        return Result(restore_quant(model, state), export=ExportPlan(exporter="qcdq", per_channel=state["per_channel"]))
