"""Label-free distillation for static int8 (`compress.quant.int8_distill`), measured on the int8 ONNX file.

The distillation case is constructed, and says so: a digits MLP whose first layer has large weights
on an input pixel that is 0 in every digit (the 8x8 digits have four such pixels). The fp32
function is unchanged, but with one weight scale per tensor those weights stretch the first layer's
int8 grid 30x, so nearest rounding moves the logits far (an outlier weight, as per-tensor int8 meets
in real models). Unlabeled inputs: the training split's images without their labels; the effect is
measured on the test split, in onnxruntime, on the int8 file.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compress.core.errors import EdgetierError
from compress.quant.int8_distill import distill_int8, simulate_int8
from export.onnx import export_onnx
from export.quantize import quantize_int8_static
from export.runtime import open_model


@pytest.fixture(scope="module")
def outlier_mlp(digits) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(digits.train.x), torch.from_numpy(digits.train.y).long()
    for _ in range(150):  # full batch, a second: ~96 % test accuracy
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    dead = np.flatnonzero(np.ptp(digits.train.x.reshape(len(digits.train.x), -1), 0) == 0)
    assert 0 in dead and not digits.test.x.reshape(len(digits.test.x), -1)[:, 0].any()  # pixel 0: always 0
    with torch.no_grad():
        model[1].weight[:, 0] = 30 * model[1].weight.abs().max()
    return model.eval()


def _int8_logits(model, digits, path) -> np.ndarray:
    fp32 = export_onnx(model, (torch.from_numpy(digits.test.x[:1]),), path)
    int8 = quantize_int8_static(fp32, path.with_suffix(".int8.onnx"), digits.calib.x, per_channel=False,
                                calibration="percentile")
    return open_model(int8).run(None, {"input": digits.test.x})[0]


def test_distillation_brings_the_int8_file_closer_to_the_float_model(outlier_mlp, digits, tmp_path):
    with torch.no_grad():
        reference = outlier_mlp(torch.from_numpy(digits.test.x)).numpy()
    nearest = _int8_logits(outlier_mlp, digits, tmp_path / "nearest.onnx")
    tuned, report = distill_int8(outlier_mlp, digits.train.x, digits.calib.x, steps=100, lr=1e-3, batch_size=64,
                                 per_channel=False)
    distilled = _int8_logits(tuned, digits, tmp_path / "distilled.onnx")
    rms = {k: float(np.sqrt(np.mean((v - reference) ** 2))) for k, v in (("nearest", nearest), ("distilled", distilled))}
    # measured 2026-12-07: logit rms nearest 1.18, distilled 0.48 (0.41x; 0.35-0.53x over lr 1e-4..1e-3 and
    # 100-300 steps); the simulation's own estimate 1.20 -> 0.48. The 0.7x bound leaves room for another
    # CPU's rounding and training noise, and fails if the trained weights do not reach the file
    assert rms["distilled"] < 0.7 * rms["nearest"], rms
    assert report.rms_after < 0.7 * report.rms_before, report
    # the simulation rounds what the file rounds: the model's input, both ReLU outputs and the logits
    assert (report.steps, report.layers, report.activations) == (100, 3, 4)
    assert report.rms_before == pytest.approx(rms["nearest"], rel=0.2)  # measured 1.20 vs 1.18


def test_weights_are_written_on_the_grid_the_int8_file_stores(model, digits, tmp_path):
    tuned, _ = distill_int8(model, digits.train.x, digits.calib.x, steps=5, lr=1e-3)
    fp32 = export_onnx(tuned, (torch.from_numpy(digits.test.x[:1]),), tmp_path / "m.onnx")
    int8 = onnx.load(quantize_int8_static(fp32, tmp_path / "m.int8.onnx", digits.calib.x))
    inits = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    stored = []
    for node in int8.graph.node:  # every int8 weight, dequantized, must equal the trained float weight
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0], np.zeros(0)).dtype == np.int8:
            q, scale = inits[node.input[0]].astype(np.float64), inits[node.input[1]].astype(np.float64)
            stored.append(q * scale.reshape(-1, *([1] * (q.ndim - 1))) if scale.ndim else q * scale)
    trained = [m.weight.detach().double().numpy() for m in tuned.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(stored) == len(trained)
    for w in trained:  # int8 * scale in float32: equal to float32 rounding (1e-6 relative)
        assert any(s.shape == w.shape and np.allclose(s, w, rtol=1e-6, atol=1e-9) for s in stored)


def test_the_simulation_rounds_what_the_int8_file_rounds_at_percentile_ranges():
    torch.manual_seed(0)
    model = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)))
    x = np.arange(-50, 1000, dtype=np.float32).reshape(-1, 1)
    points = simulate_int8(model, x, percentile=99.0)
    # the first layer's input, the second's input (ReLU output: the first layer's output is not rounded
    # on its own, the fused Conv/Gemm + ReLU writes only the ReLU's), the second layer's output
    assert len(points) == 3
    low, high = next(p.range for p in points if p.range[1] > 500)  # the first layer's input: x itself
    assert low == pytest.approx(np.percentile(x, 1.0), abs=1.0) and high == pytest.approx(np.percentile(x, 99.0), abs=1.0)
    out = model(torch.tensor([[123.4]]))  # now rounded: a step of (high - low) / 255 ~ 4 on the input
    assert out.shape == (1, 1)


def test_bad_arguments_name_the_fix(model, digits):
    with pytest.raises(EdgetierError, match="steps=300"):
        distill_int8(model, digits.train.x, digits.calib.x, steps=-1)
    with pytest.raises(EdgetierError, match="calibration inputs are empty"):
        distill_int8(model, digits.train.x, digits.calib.x[:0])


def test_a_model_torch_fx_cannot_trace_gets_one_clear_error():
    class Loops(nn.Module):  # Python control flow on a tensor's value, like many Hugging Face forwards
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    x = np.ones((8, 4), np.float32)
    with pytest.raises(EdgetierError, match="cannot be traced by torch.fx") as err:
        distill_int8(Loops(), x, x, steps=1)
    assert "Loops" in str(err.value) and err.value.fix
