"""The brevitas layers QAT swaps in, built from plain PyTorch layers, and their calibration.

Quantizers (all brevitas' own):
- weights: `Int8WeightPerChannelFloatMSE` / `Int8WeightPerTensorFloatMSE` with the layer's bit
  width — symmetric, narrow range (2 bits = ternary {-1, 0, 1}), a scale *learned* during QAT and
  initialized to the one minimizing the weights' quantization MSE. At 2 bits the max-abs scale
  that the plain quantizers use rounds most weights to zero; the MSE scale halves that error.
- activations: `Uint8ActPerTensorFloat` after a ReLU (`QuantReLU`), `Int8ActPerTensorFloat` /
  `Uint8ActPerTensorFloat` at a layer's input when nothing quantizes it before (the model's
  input, a pooled feature), and `Int8ActPerTensorFloat` on the model's output (logits); each
  with a learned scale initialized by `calibrate` from calibration data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
OUTPUT_BITS = 8  # logits leave the model as int8, as an int8 device hands them over


@dataclass(frozen=True)
class LayerSpec:
    """How one layer is quantized: weight bits, and which of its input / output is quantized here.

    `input_bits` is None when the input arrives already quantized (from a `QuantReLU`) or when
    activations stay float; `output_bits` is set on the layer whose output is the model's output.
    """

    weight_bits: int
    input_bits: int | None = None
    input_signed: bool = True
    output_bits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _brevitas() -> SimpleNamespace:
    """brevitas' layers and quantizers, imported on first use: importing brevitas takes seconds, and
    `compress` (the CLI, `edgetier validate`) must not pay that unless a model is quantized."""
    with warnings.catch_warnings():
        # brevitas warns at import about optional kernels (fast_hadamard_transform) that QAT does not use.
        warnings.simplefilter("ignore")
        from brevitas.graph.calibrate import calibration_mode
        from brevitas.nn import QuantConv1d, QuantConv2d, QuantLinear, QuantReLU
        from brevitas.quant import (
            Int8ActPerTensorFloat,
            Int8WeightPerChannelFloatMSE,
            Int8WeightPerTensorFloatMSE,
            Uint8ActPerTensorFloat,
        )
    return SimpleNamespace(calibration_mode=calibration_mode, QuantConv1d=QuantConv1d, QuantConv2d=QuantConv2d,
                           QuantLinear=QuantLinear, QuantReLU=QuantReLU, Int8ActPerTensorFloat=Int8ActPerTensorFloat,
                           Int8WeightPerChannelFloatMSE=Int8WeightPerChannelFloatMSE,
                           Int8WeightPerTensorFloatMSE=Int8WeightPerTensorFloatMSE,
                           Uint8ActPerTensorFloat=Uint8ActPerTensorFloat)


def quant_layer(module: nn.Module, spec: LayerSpec, *, per_channel: bool) -> nn.Module:
    """A brevitas copy of the Conv1d / Conv2d / Linear `module`, with its weights and bias.

    >>> q = quant_layer(nn.Linear(4, 3), LayerSpec(weight_bits=4), per_channel=True)
    >>> type(q).__name__, int(q.quant_weight().int().abs().max()) <= 7
    ('QuantLinear', True)
    """
    b = _brevitas()
    kwargs: dict[str, Any] = {
        "weight_quant": b.Int8WeightPerChannelFloatMSE if per_channel else b.Int8WeightPerTensorFloatMSE,
        "weight_bit_width": spec.weight_bits,
        "bias": module.bias is not None,
    }
    if spec.input_bits is not None:
        kwargs["input_quant"] = b.Int8ActPerTensorFloat if spec.input_signed else b.Uint8ActPerTensorFloat
        kwargs["input_bit_width"] = spec.input_bits
    if spec.output_bits is not None:
        kwargs["output_quant"] = b.Int8ActPerTensorFloat
        kwargs["output_bit_width"] = spec.output_bits
    if isinstance(module, nn.Linear):
        quant: nn.Module = b.QuantLinear(module.in_features, module.out_features, **kwargs)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        cls = b.QuantConv1d if isinstance(module, nn.Conv1d) else b.QuantConv2d
        quant = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                    padding=module.padding, dilation=module.dilation, groups=module.groups,
                    padding_mode=module.padding_mode, **kwargs)
    else:
        raise TypeError(f"cannot quantize a {type(module).__name__}; quantizable: Conv1d, Conv2d, Linear")
    param = next(module.parameters())
    quant.to(device=param.device, dtype=param.dtype)
    quant.load_state_dict(module.state_dict(), strict=False)  # weight and bias; the scales start from them
    quant.train(module.training)
    return quant


def quant_relu(bits: int) -> nn.Module:
    """A ReLU whose output is quantized to `bits` unsigned bits.

    >>> type(quant_relu(8)).__name__
    'QuantReLU'
    """
    b = _brevitas()
    return b.QuantReLU(act_quant=b.Uint8ActPerTensorFloat, bit_width=bits)


@torch.no_grad()
def quantized_weight(module: nn.Module, bits: int, *, per_channel: bool) -> torch.Tensor:
    """`module`'s weight as the QAT quantizer starts from it at `bits` bits (a float tensor).

    >>> w = quantized_weight(nn.Linear(16, 4), 2, per_channel=True)
    >>> [len(torch.unique(row)) <= 3 for row in w]
    [True, True, True, True]
    """
    return quant_layer(module, LayerSpec(weight_bits=bits), per_channel=per_channel).quant_weight().value.detach()


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Initialize every activation quantizer's scale from the float activations on `batches`.

    BatchNorm stays in eval mode (its running statistics are not touched); the model's mode is
    restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with _brevitas().calibration_mode(model):
            for x in batches:
                model(x)
    finally:
        model.train(was_training)


def is_quant_layer(module: nn.Module) -> bool:
    """Whether `module` is a brevitas layer (without importing brevitas when no model uses it)."""
    return type(module).__module__.startswith("brevitas.")
