"""uint8 activations in the static int8 file: stored as uint8, and onnxruntime runs every convolution of
a residual block (whose input feeds two layers) with integer kernels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from export.errors import ExportError
from export.onnx import check_parity, export_onnx
from export.quantize import quantize_int8_static


class Residual(nn.Module):
    """stem conv -> (conv1 -> ReLU -> conv2) + shortcut conv -> pool -> linear: the stem's output feeds
    two convolutions, the pattern onnxruntime's int8 -> uint8 rewrite skips."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.ReLU())
        self.conv1 = nn.Conv1d(16, 16, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.shortcut = nn.Conv1d(16, 16, 1, stride=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(h))) + self.shortcut(h)))


CONVS = 4


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = Residual().eval()
    return model, export_onnx(model, (torch.randn(1, 1, 40),), tmp_path_factory.mktemp("res") / "fp32.onnx")


def _optimized_ops(path: Path, tmp_path: Path) -> Counter:
    """The operators onnxruntime actually runs: the graph after its default (all) optimizations."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    opts.log_severity_level = 3  # the "hardware-specific optimized model" warning is expected here
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(opts.optimized_model_filepath).graph.node)


def test_uint8_activations_are_stored_as_uint8(residual_onnx, tmp_path: Path) -> None:
    model, fp32 = residual_onnx
    x = np.random.default_rng(0).standard_normal((64, 1, 40)).astype(np.float32)
    path = quantize_int8_static(fp32, tmp_path / "u8.onnx", x, activations="uint8")
    graph = onnx.load(path).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    quantize_zero_points = [inits[node.input[2]] for node in graph.node if node.op_type == "QuantizeLinear"]
    assert quantize_zero_points and all(zp.dtype == np.uint8 for zp in quantize_zero_points)
    # weights stay symmetric int8 (zero point 0), whatever the activations
    weights = [inits[node.input[0]] for node in graph.node
               if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].ndim == 3]
    assert len(weights) == CONVS and all(w.dtype == np.int8 for w in weights)
    # same function: random weights and inputs give logits with small margins, so top-1 is judged loosely
    # (a wrong zero point, e.g. int8 values read as uint8, shifts every activation by 128 steps and lands
    # near chance, 10 %)
    parity = check_parity(path, model, x, atol=np.inf, rtol=np.inf)
    assert parity.top1_agreement >= 0.8


def test_uint8_activations_fuse_every_convolution(residual_onnx, tmp_path: Path) -> None:
    _, fp32 = residual_onnx
    x = np.random.default_rng(0).standard_normal((64, 1, 40)).astype(np.float32)
    ops = _optimized_ops(quantize_int8_static(fp32, tmp_path / "u8.onnx", x, activations="uint8"), tmp_path)
    # every convolution runs as an integer QLinearConv, none stays float between Dequantize / Quantize
    # nodes (with int8 activations onnxruntime 1.32 leaves the stem, conv1 and the shortcut float here)
    assert ops["QLinearConv"] == CONVS and ops["Conv"] == 0 and ops.get("FusedConv", 0) == 0
    assert ops["DequantizeLinear"] <= 1  # only the logits leave the integer domain


def test_unknown_activation_type_is_explained(residual_onnx, tmp_path: Path) -> None:
    _, fp32 = residual_onnx
    with pytest.raises(ExportError, match="unknown activation type 'int4'") as err:
        quantize_int8_static(fp32, tmp_path / "q.onnx", np.zeros((4, 1, 40), np.float32), activations="int4")
    assert "int8, uint8" in str(err.value)
    assert not (tmp_path / "q.onnx").exists()
