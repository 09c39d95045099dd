"""`qat`: quantization-aware training with brevitas, at any weight / activation width from 2 to 8 bits.

`apply` swaps the selected Conv1d / Conv2d / Linear layers for brevitas `QuantConv1d /
QuantConv2d / QuantLinear` (weights fake-quantized with a learned scale, per output channel or
per tensor), quantizes activations where `compress.quant.swap` explains, and initializes the
activation scales on the calibration split. The quantizers live in the layers' `forward`, so
the stage's training — ours or the user's own loop — trains the quantized model with no hooks.
The exporter writes a QCDQ ONNX graph whose weights are stored as int8 / int4 / int2
(`export.qcdq`), so a 4-bit model is really half the size of an 8-bit one on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.selectors import matches, select
from compress.core.technique import BaseTechnique, ExportPlan, Result
from compress.quant import precision
from compress.quant.layers import QUANTIZABLE, LayerSpec, calibrate, is_quant_layer
from compress.quant.swap import layer_specs, swap_in, wire
from compress.targets import Target

WIRING_SAMPLES = 64
CALIB_BATCH = 128


def check_bits_range(value: int | None, what: str) -> int | None:
    if value is not None and not precision.MIN_BITS <= value <= precision.MAX_BITS:
        raise ValueError(f"{what} must be between {precision.MIN_BITS} and {precision.MAX_BITS} bits, got {value}")
    return value


class QATConfig(TechniqueConfig):
    """Quantization-aware training of the selected layers (default: every Conv1d, Conv2d, Linear).

    >>> QATConfig(weight_bits=4, layers={"stem.conv": 8}).to_dict()["layers"]
    {'stem.conv': 8}
    >>> QATConfig(weight_bits=1)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for QATConfig
    weight_bits
      Value error, weight_bits must be between 2 and 8 bits, got 1 ...
    """

    kind: Literal["qat"] = "qat"
    weight_bits: int | None = Field(None, description="weight bits (2-8) of every selected layer; default: 8 when "
                                    "the target runs int8, else 4")
    act_bits: int | None = Field(None, description="activation bits (2-8); default as for weight_bits")
    weight_only: bool = Field(False, description="quantize weights only; activations stay float")
    per_channel: bool = Field(True, description="one weight scale per output channel (else one per tensor)")
    layers: dict[str, int] = Field(default_factory=dict, description="selector -> weight bits for those layers, "
                                   "overriding weight_bits (later entries win)")
    calib_samples: int = Field(256, gt=0, le=100_000, description="calibration samples that initialize the activation scales")

    @field_validator("weight_bits", "act_bits")
    @classmethod
    def _bits(cls, value: int | None, info: Any) -> int | None:
        return check_bits_range(value, info.field_name)

    @field_validator("layers")
    @classmethod
    def _layer_bits(cls, value: dict[str, int]) -> dict[str, int]:
        for selector, bits in value.items():
            check_bits_range(bits, f"layers[{selector!r}]")
        return value

    @model_validator(mode="after")
    def _weight_only(self) -> QATConfig:
        if self.weight_only and self.act_bits is not None:
            raise ValueError("weight_only keeps activations float, so act_bits cannot be set with it; remove one")
        return self

    def check_target(self, target: Target) -> None:
        bits = [self.weight_bits or precision.default_bits(target), *self.layers.values()]
        precision.check_weight_bits(bits, target, what="qat weight_bits / layers")
        if not self.weight_only:
            precision.check_act_bits(self.act_bits or precision.default_bits(target), target, what="qat act_bits")

    def check_model(self, model: nn.Module, target: Target | None) -> None:
        layer_bits(model, self, target)

    def resolved_act_bits(self, target: Target | None) -> int | None:
        return None if self.weight_only else self.act_bits or precision.default_bits(target)


def quantizable_layers(model: nn.Module, targets: tuple[str, ...], ignore: tuple[str, ...], *,
                       where: str) -> dict[str, nn.Module]:
    """The selected Conv1d / Conv2d / Linear layers; an error when there are none.

    >>> list(quantizable_layers(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), (), (), where="qat"))
    ['0']
    """
    chosen = {n: m for n, m in select(model, targets, ignore, where=where).items() if isinstance(m, QUANTIZABLE)}
    if not chosen:
        already = any(is_quant_layer(m) for m in model.modules())
        raise EdgetierError(
            f"{type(model).__name__} has no {'unquantized ' if already else ''}Conv1d, Conv2d or Linear layer "
            f"among the selected modules, so there is nothing to quantize",
            where=where, fix="select Conv1d / Conv2d / Linear layers with `targets`, or remove this stage"
            + (" (the model is already quantized by an earlier stage)" if already else ""))
    return chosen


def layer_bits(model: nn.Module, config: QATConfig, target: Target | None) -> dict[str, int]:
    """Weight bits per selected layer: `weight_bits` (or the target's default), then `layers` overrides."""
    chosen = quantizable_layers(model, config.targets, config.ignore, where="qat: targets")
    default = config.weight_bits or precision.default_bits(target)
    bits = dict.fromkeys(chosen, default)
    for selector, b in config.layers.items():
        hit = [n for n in matches(model, selector, where="qat: layers") if n in chosen]
        if not hit:
            raise EdgetierError(f"layers selector {selector!r} matches none of the {len(chosen)} quantized layers",
                                where="qat: layers",
                                fix=f"use names of quantized layers, e.g. {', '.join(list(chosen)[:3])}")
        bits.update(dict.fromkeys(hit, b))
    return bits


def quantize(model: nn.Module, bits: dict[str, int], ctx: Context, *, act_bits: int | None, per_channel: bool,
             calib_samples: int) -> tuple[nn.Module, dict[str, LayerSpec], list[str]]:
    """Swap in the quant layers for `bits` (name -> weight bits) and calibrate activation scales; in place."""
    calib = _calib_inputs(ctx, calib_samples)
    wiring = wire(model, list(bits), calib[:WIRING_SAMPLES]) if act_bits is not None else None
    specs, relus = layer_specs(bits, wiring, act_bits)
    swap_in(model, specs, relus, act_bits=act_bits, per_channel=per_channel)
    if act_bits is not None:
        calibrate(model, _batches(calib))
    with torch.no_grad():  # initialize the weight scales (MSE) now, so that the state_dict holds them
        was_training = model.training
        model.eval()
        model(calib[:1])
        model.train(was_training)
    return model, specs, relus


def quant_state(specs: dict[str, LayerSpec], relus: list[str], act_bits: int | None, per_channel: bool) -> dict[str, Any]:
    return {"layers": {n: s.to_dict() for n, s in specs.items()}, "relus": list(relus), "act_bits": act_bits,
            "per_channel": per_channel}


def restore_quant(model: nn.Module, state: dict[str, Any]) -> nn.Module:
    """Swap in the same quant layers as `quant_state` describes (weights and scales come from the state_dict)."""
    specs = {n: LayerSpec(**s) for n, s in state["layers"].items()}
    return swap_in(model, specs, list(state["relus"]), act_bits=state["act_bits"], per_channel=state["per_channel"])


def quant_report(model: nn.Module, specs: dict[str, LayerSpec], act_bits: int | None, per_channel: bool) -> dict[str, Any]:
    modules = dict(model.named_modules())
    layers: dict[str, Any] = {}
    stored_bits = float_bits = 0
    for name, spec in specs.items():
        numel = modules[name].weight.numel()
        stored_bits += numel * precision.storage_bits(spec.weight_bits)
        float_bits += numel * 32
        layers[name] = {"weight_bits": spec.weight_bits, "stored_as": f"int{precision.storage_bits(spec.weight_bits)}",
                        "params": numel,
                        "input": "float" if act_bits is None else (
                            "quantized by the preceding QuantReLU" if spec.input_bits is None else
                            f"{'int' if spec.input_signed else 'uint'}{spec.input_bits} input quantizer"),
                        "output_bits": spec.output_bits}
    histogram = {str(b): sum(1 for s in specs.values() if s.weight_bits == b)
                 for b in sorted({s.weight_bits for s in specs.values()})}
    return {"artifact": "QCDQ ONNX (brevitas export), weights stored as int8 / int4 / int2 initializers",
            "quantized_layers": len(specs), "layers_per_bits": histogram, "act_bits": act_bits,
            "per_channel": per_channel, "weights_kb": round(stored_bits / 8 / 1024, 3),
            "fp32_weights_kb": round(float_bits / 8 / 1024, 3), "layers": layers}


class QAT(BaseTechnique):
    config_type = QATConfig
    config: QATConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        cfg = self.config
        if ctx.target is not None:
            cfg.check_target(ctx.target)
        bits = layer_bits(model, cfg, ctx.target)
        act_bits = cfg.resolved_act_bits(ctx.target)
        model, specs, relus = quantize(model, bits, ctx, act_bits=act_bits, per_channel=cfg.per_channel,
                                       calib_samples=cfg.calib_samples)
        return Result(model, quant_report(model, specs, act_bits, cfg.per_channel),
                      export=ExportPlan(exporter="qcdq", per_channel=cfg.per_channel),
                      state=quant_state(specs, relus, act_bits, cfg.per_channel))

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        return Result(restore_quant(model, state), export=ExportPlan(exporter="qcdq", per_channel=state["per_channel"]))


def _calib_inputs(ctx: Context, samples: int) -> torch.Tensor:
    if ctx.data is not None and len(ctx.data.calib.x):
        return torch.from_numpy(np.ascontiguousarray(ctx.data.calib.x[:samples]))
    if ctx.example_inputs:
        return ctx.example_inputs[0]
    raise EdgetierError("quantization needs inputs to calibrate activation ranges, and got neither data nor "
                        "example inputs", where="qat", fix="pass data=... (or example_inputs=...) to compress.apply")


def _batches(x: torch.Tensor) -> Iterator[torch.Tensor]:
    return (x[i:i + CALIB_BATCH] for i in range(0, len(x), CALIB_BATCH))
