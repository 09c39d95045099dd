"""Where activations get quantized, and swapping plain layers for brevitas ones.

Activation quantization sits at the inputs of the quantized layers and at the model's output:
- a layer whose input is the output of an `nn.ReLU` module gets it quantized by that ReLU,
  swapped for a `QuantReLU` (unsigned: a ReLU's output is never negative, so all bits count);
- any other input (the model's input, a pooled or flattened feature, a residual sum) is
  quantized by the layer's own input quantizer, signed unless it was never negative on the
  calibration batch;
- the layer whose output is the model's output quantizes it (int8 logits).

Residual adds therefore run on dequantized values (the QCDQ graph's `Add` sees floats) and the
ReLU after the add requantizes: no shared-scale constraint across the branches is needed.
Which ReLU feeds which layer is read off one forward pass (tensor identity), so any model whose
ReLUs are modules works without tracing; a functional `F.relu` simply leaves the next layer to
quantize its own input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compress.quant.layers import OUTPUT_BITS, LayerSpec, quant_layer, quant_relu


@dataclass(frozen=True)
class Wiring:
    """What one forward pass shows: the ReLU feeding each layer (or None), signedness, output layer."""

    relu_of: dict[str, str | None]
    signed_input: dict[str, bool]
    output_layer: str | None


@torch.no_grad()
def wire(model: nn.Module, names: list[str], x: torch.Tensor) -> Wiring:
    """Trace which `nn.ReLU` module's output each layer in `names` consumes, on one batch `x`.

    >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> w = wire(m, ["0", "2"], torch.randn(5, 3))
    >>> w.relu_of, w.signed_input["0"], w.output_layer
    ({'0': None, '2': '1'}, True, '2')
    """
    modules = dict(model.named_modules())
    relu_outputs: list[tuple[str, torch.Tensor]] = []
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in modules.items():
        if isinstance(module, nn.ReLU):
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: relu_outputs.append((name, out))))
    for name in names:
        def pre(_m, args, name=name):
            inputs.setdefault(name, args[0])

        def post(_m, _i, out, name=name):
            outputs.setdefault(name, out)
        handles += [modules[name].register_forward_pre_hook(pre), modules[name].register_forward_hook(post)]
    was_training = model.training
    model.eval()
    try:
        result = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    relu_of = {name: next((r for r, out in relu_outputs if out is inputs.get(name)), None) for name in names}
    signed = {name: bool(inputs[name].min() < 0) if name in inputs else True for name in names}
    output_layer = next((name for name in names if outputs.get(name) is result), None)
    return Wiring(relu_of=relu_of, signed_input=signed, output_layer=output_layer)


def layer_specs(bits: dict[str, int], wiring: Wiring | None, act_bits: int | None) -> tuple[dict[str, LayerSpec], list[str]]:
    """Per-layer specs and the ReLUs to quantize, for weight `bits` per layer and `act_bits` (None = float)."""
    if act_bits is None or wiring is None:
        return {name: LayerSpec(weight_bits=b) for name, b in bits.items()}, []
    specs, relus = {}, []
    for name, b in bits.items():
        relu = wiring.relu_of.get(name)
        if relu is not None and relu not in relus:
            relus.append(relu)
        specs[name] = LayerSpec(weight_bits=b, input_bits=None if relu else act_bits,
                                input_signed=wiring.signed_input.get(name, True),
                                output_bits=OUTPUT_BITS if name == wiring.output_layer else None)
    return specs, relus


def swap_in(model: nn.Module, specs: dict[str, LayerSpec], relus: list[str], *, act_bits: int | None,
            per_channel: bool) -> nn.Module:
    """Replace each layer of `specs` by its brevitas version and each ReLU of `relus` by a QuantReLU, in place."""
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        _set(model, name, quant_layer(modules[name], spec, per_channel=per_channel))
    for name in relus:
        relu = quant_relu(act_bits)
        relu.train(modules[name].training)
        _set(model, name, relu)
    return model


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
