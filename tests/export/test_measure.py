"""Measurements on the exported file: latency, accuracy, size and parameter counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.errors import ExportError
from export.measure import accuracy_of, latency_ms, onnx_stats
from export.onnx import export_onnx


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_latency_is_positive_and_records_threads(fp32_onnx: Path, data: dict) -> None:
    lat = latency_ms(fp32_onnx, data["x_test"][:1], threads=2, warmup=3, repeats=20)
    assert 0 < lat.median_ms <= lat.p90_ms
    assert lat.median_ms < 1_000  # a 52k-parameter model; a second would mean the timer is wrong
    assert (lat.threads, lat.repeats) == (2, 20)


def test_latency_needs_batch_one(fp32_onnx: Path, data: dict) -> None:
    with pytest.raises(ExportError, match="batch 1"):
        latency_ms(fp32_onnx, data["x_test"][:4])


def test_params_equal_pytorch_without_batchnorm(fp32_onnx: Path, int8_onnx: Path, model: nn.Module) -> None:
    # Without BatchNorm every PyTorch parameter is a Conv/Gemm weight or bias in the graph, so
    # the counts are equal. In the int8 file the same tensors are int8/int32 behind
    # DequantizeLinear; scales and zero points must not count, so the total is unchanged.
    assert onnx_stats(fp32_onnx)["params"] == n_params(model) == 52_170
    assert onnx_stats(int8_onnx)["params"] == n_params(model)


def test_batchnorm_is_folded_into_the_conv(tmp_path: Path) -> None:
    # Eval-mode export folds BatchNorm into the conv: its 2x16 learned values and running
    # statistics become one 16-element conv bias. PyTorch counts 80 + 32 = 112, ONNX 80 + 16.
    net = nn.Sequential(nn.Conv1d(1, 16, 5, bias=False), nn.BatchNorm1d(16))
    path = export_onnx(net, (torch.zeros(1, 1, 40),), tmp_path / "bn.onnx")
    assert n_params(net) == 112
    assert onnx_stats(path)["params"] == 96


def test_matmul_with_add_bias_is_counted(tmp_path: Path) -> None:
    # A Linear on a 3-D input exports as MatMul + Add; the Add's bias is a parameter too.
    net = nn.Linear(40, 8)
    path = export_onnx(net, (torch.zeros(1, 3, 40),), tmp_path / "mm.onnx")
    assert onnx_stats(path)["params"] == n_params(net) == 328


def test_bytes_and_precision_counts(fp32_onnx: Path, int8_onnx: Path) -> None:
    fp32, int8 = onnx_stats(fp32_onnx), onnx_stats(int8_onnx)
    assert fp32["bytes"] == fp32_onnx.stat().st_size
    assert fp32["precision_counts"] == {"float32": 52_170}
    assert int8["bytes"] == int8_onnx.stat().st_size
    # 52,000 weights as int8 and 170 biases as int32, plus scales and zero points.
    assert int8["precision_counts"]["int8"] >= 52_000
    assert int8["precision_counts"]["int32"] >= 170
    assert int8["precision_counts"]["float32"] < 1_000  # only scales: no float copy of the weights


def test_accuracy_of() -> None:
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 0.0]])
    assert accuracy_of(logits, np.array([0, 1, 1, 0])) == 0.75
    with pytest.raises(ExportError, match="expected logits"):
        accuracy_of(logits, np.array([0, 1]))
