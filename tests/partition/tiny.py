"""The tiny resnet1d the split tests cut: its ONNX file and the cuts where one tensor crosses."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.models import build
from export.onnx import export_onnx
from tests.partition.test_split import _every_cut

SPEC_IN = {"name": "input", "shape": [None, 1, 40], "dtype": "float32"}
SPEC_OUT = {"name": "logits", "shape": [None, 10]}


def tiny_chain(folder: Path) -> tuple[Path, list]:
    """resnet1d width 8 (seed 0) exported to `folder`/m.onnx, and its single-tensor cuts (block boundaries)."""
    torch.manual_seed(0)
    net = build("resnet1d", input_shape=(1, 40), num_classes=10, width=8).eval()
    path = export_onnx(net, tuple(net.example_inputs(batch=1)), folder / "m.onnx")
    return path, [c for c in _every_cut(path, stride=1) if len(c) == 1]
