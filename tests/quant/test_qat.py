"""`qat`: which layers and activations get quantized, per-layer bits, the user's own loop, and restore."""

from __future__ import annotations

import copy
import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.core.context import Context
from compress.core.train import evaluate
from compress.quant.qat import QAT, QATConfig


def _ints(layer: nn.Module) -> torch.Tensor:
    return layer.quant_weight().int()


def test_swaps_layers_and_quantizes_activations_where_they_enter(model, ctx):
    result = QAT(QATConfig(weight_bits=4, layers={"stem.conv": 8, "re:layer3\\..*": 2})).apply(model, ctx)
    m = result.model
    assert type(m.stem.conv).__name__ == "QuantConv2d" and type(m.head.fc).__name__ == "QuantLinear"
    # weights on the integer grid of their width (narrow range: ±(2^(b-1) - 1))
    assert int(_ints(m.stem.conv).abs().max()) == 127
    assert int(_ints(m.layer1[0].conv1).abs().max()) == 7
    assert set(_ints(m.layer3[0].conv2).unique().tolist()) <= {-1, 0, 1}
    # ReLUs that feed a quantized layer are quantized; the stem conv quantizes the raw input (digits are >= 0,
    # so unsigned), the classifier its pooled input, and the logits leave as int8
    assert type(m.stem.relu).__name__ == "QuantReLU" and type(m.layer1[0].relu1).__name__ == "QuantReLU"
    layers = result.report["layers"]
    assert layers["stem.conv"]["input"] == "uint8 input quantizer"
    assert layers["layer1.0.conv1"]["input"] == "quantized by the preceding QuantReLU"
    assert layers["head.fc"]["input"] == "uint8 input quantizer" and layers["head.fc"]["output_bits"] == 8
    assert result.report["layers_per_bits"] == {"2": 3, "4": 6, "8": 1}
    assert result.export.exporter == "qcdq" and not list(result.hooks)
    # stored sizes: 1 + 0.5 + 0.25 bytes per weight
    params = {n: v["params"] for n, v in layers.items()}
    expected = sum(p * {8: 8, 4: 4, 2: 2}[layers[n]["weight_bits"]] for n, p in params.items()) / 8 / 1024
    assert abs(result.report["weights_kb"] - expected) < 1e-3


def test_calibrated_8_bit_model_is_close_to_float_before_training(trained, model, ctx, digits):
    float_acc = evaluate(trained, digits.test)
    QAT(QATConfig()).apply(model, ctx)
    # int8 weights and activations with calibrated ranges lose < 2 points on 360 test digits (7 samples)
    assert evaluate(model, digits.test) > float_acc - 0.02


def test_users_own_loop_trains_the_quantized_model(model, ctx, digits):
    result = compress.apply(model, QATConfig(weight_bits=4), target="rpi4", data=digits,
                            example_inputs=ctx.example_inputs)
    qmodel, hooks = result.model, result.hooks
    before = copy.deepcopy(qmodel.state_dict())
    optimizer = torch.optim.Adam(qmodel.parameters(), lr=1e-3)
    x, y = torch.from_numpy(digits.train.x[:256]), torch.from_numpy(digits.train.y[:256])
    losses = []
    qmodel.train()
    for _ in range(3):
        for i in range(0, 256, 64):
            out = qmodel(x[i:i + 64])
            loss = F.cross_entropy(out, y[i:i + 64]) + hooks.loss(qmodel, x[i:i + 64], out, y[i:i + 64])
            optimizer.zero_grad()
            loss.backward()
            hooks.after_backward(qmodel)
            optimizer.step()
            hooks.after_step(qmodel)
            losses.append(float(loss.detach()))
    after = qmodel.state_dict()
    # the learned scales train with the weights: quantization is in forward, not in a hook
    scales = [k for k in after if k.endswith("scaling_impl.value")]
    assert scales and any(not torch.equal(before[k], after[k]) for k in scales)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_restore_rebuilds_the_same_model_from_state(trained, model, ctx, digits):
    technique = QAT(QATConfig(weight_bits=4, layers={"head.fc": 8}))
    result = technique.apply(model, ctx)
    result.model.train()
    optimizer = torch.optim.SGD(result.model.parameters(), lr=0.05)
    x, y = torch.from_numpy(digits.train.x[:128]), torch.from_numpy(digits.train.y[:128])
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(result.model(x), y).backward()
        optimizer.step()
    # what the pipeline saves: state and state_dict, loaded with weights_only=True
    buffer = io.BytesIO()
    torch.save({"state": result.state, "state_dict": result.model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = technique.restore(copy.deepcopy(trained), saved["state"], Context(example_inputs=())).model
    fresh.load_state_dict(saved["state_dict"])  # strict: same modules, same quantizer parameters
    with torch.no_grad():
        xt = torch.from_numpy(digits.test.x)
        assert torch.equal(result.model.eval()(xt), fresh.eval()(xt))


def test_weight_only_keeps_activations_float(model, ctx):
    result = QAT(QATConfig(weight_bits=4, weight_only=True)).apply(model, ctx)
    assert not any(type(m).__name__ == "QuantReLU" for m in result.model.modules())
    assert result.report["act_bits"] is None and result.report["layers"]["head.fc"]["output_bits"] is None
