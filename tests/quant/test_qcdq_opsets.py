"""QCDQ graphs are valid at the opset their low-bit weights raise them to, for every operator: the zoo,
a user CNN whose forward uses `x.mean((2, 3))` (ReduceMean's axes became an input at opset 18), Pad,
Split, Squeeze / Unsqueeze (an `If` subgraph on a dynamic batch), and a tiny Hugging Face ViT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.adapter import ModelAdapter
from compress.core.context import Context
from compress.models import ZOO, build
from compress.quant.qat import QAT, QATConfig
from export.qcdq import export_qcdq
from tests.hf.tiny import tiny_vit
from tests.quant.parity import assert_within_steps


class MeanPoolNet(nn.Module):
    """A user CNN: reductions over (2, 3), padding, a channel split and a squeeze / unsqueeze pair."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(F.relu(self.c2(F.relu(self.c1(x)))), (1, 1, 1, 1))
        a, b = x.split(4, dim=1)
        x = torch.cat([a, b.squeeze(0).unsqueeze(0) if x.shape[0] == 1 else b], 1)
        return self.fc(x.mean((2, 3)) + x.amax((2, 3)) + 0.1 * x.sum((2, 3)))


def _export_and_run(model: nn.Module, x: torch.Tensor, bits: int, tmp_path) -> tuple[np.ndarray, np.ndarray, object]:
    qmodel = QAT(QATConfig(weight_bits=bits)).apply(model, Context(example_inputs=(x[:1],))).model.eval()
    out = export_qcdq(qmodel, (x[:1],), tmp_path / "m.onnx")  # runs onnx.checker with full_check itself
    proto = onnx.load(str(out.path))
    onnx.checker.check_model(proto, full_check=True)
    assert out.opset == {8: 17, 4: 21, 2: 18}[bits] == proto.opset_import[0].version
    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = qmodel(x)
    return got, ref.numpy(), out


def _close(got: np.ndarray, ref: np.ndarray, out) -> None:
    # an int8 output: within a few output steps (tests/quant/parity.py); a float output differs by float
    # summation order only (ulp-level on these magnitudes)
    if out.output_step is not None:
        assert_within_steps(got, ref, out.output_step)
    else:
        assert np.abs(got - ref).max() <= 1e-4 * (1 + np.abs(ref).max())


@pytest.mark.parametrize("bits", [4, 2, 8])
def test_user_cnn_with_mean_over_2_3_exports_at_every_width(bits, tmp_path):
    torch.manual_seed(0)
    got, ref, out = _export_and_run(MeanPoolNet().eval(), torch.randn(1, 1, 8, 8), bits, tmp_path)
    ops = {n.op_type for n in onnx.load(str(out.path)).graph.node}
    assert {"ReduceMean", "ReduceMax", "ReduceSum", "Pad", "Split", "If"} <= ops
    _close(got, ref, out)


@pytest.mark.parametrize("zoo", sorted(ZOO))
def test_zoo_models_export_at_4_bits(zoo, tmp_path):
    torch.manual_seed(0)
    shape = (1, 40) if zoo.endswith("1d") else (1, 8, 8)
    model = build(zoo, input_shape=shape, num_classes=10, width=8) if zoo != "transformer" else \
        build(zoo, input_shape=shape, num_classes=10, dim=16)
    got, ref, out = _export_and_run(model.eval(), torch.randn(3, *shape), 4, tmp_path)
    _close(got, ref, out)


def test_hugging_face_vit_exports_at_4_bits(tmp_path):
    model, x = tiny_vit(), torch.randn(3, 1, 16, 16)
    adapted = ModelAdapter.from_model(model, x).module(model).eval()  # pixel_values in, logits out
    got, ref, out = _export_and_run(adapted, x, 4, tmp_path)
    _close(got, ref, out)
