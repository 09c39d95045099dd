"""Static int8 quantization: really smaller on disk, still agreeing with PyTorch, reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.bundle import sha256_file
from export.errors import ExportError
from export.measure import accuracy_of, onnx_stats
from export.onnx import check_parity
from export.quantize import quantize_int8_static

# int8 weights are 1 byte instead of 4, so a file whose bytes are ~all weights shrinks to
# ~0.25x; scales, zero points, int32 biases and the graph add a few KiB (measured: 0.30x).
# 0.35x fails if weights stayed float (1.0x) or were stored twice.
MAX_SIZE_RATIO = 0.35
# int8 moves the logits by ~0.4 on average (their range is ~50); only rows whose top two
# logits are that close can flip. The trained model has clear margins on most rows, so
# >= 90 % must agree (measured: 99.6 %); a broken quantization lands near chance (10 %).
MIN_TOP1_AGREEMENT = 0.9


def test_int8_file_is_really_smaller(fp32_onnx: Path, int8_onnx: Path) -> None:
    ratio = int8_onnx.stat().st_size / fp32_onnx.stat().st_size
    assert ratio < MAX_SIZE_RATIO
    counts = onnx_stats(int8_onnx)["precision_counts"]
    # The weights are stored as int8 initializers, not as float tensors with fake-quant nodes.
    assert counts["int8"] > 50_000
    assert counts.get("float32", 0) < 1_000


def test_int8_agrees_with_pytorch(int8_onnx: Path, model: nn.Module, data: dict) -> None:
    # Held-out inputs (calibration used x_train); atol/rtol=inf: only top-1 is judged here.
    parity = check_parity(int8_onnx, model, data["x_test"], atol=np.inf, rtol=np.inf)
    assert parity.top1_agreement >= MIN_TOP1_AGREEMENT
    # The logits themselves are int8: one step is 1/255 of their range, and each quantized
    # layer adds error that grows with the logit's size. Measured: mean |diff| 0.7 % of the
    # range, max 9 % (on the largest logits). A wrong scale or zero point shifts typical
    # logits by tens of percent, so 2 % (mean) and 20 % (max) separate the two with margin.
    with torch.no_grad():
        ref = model(torch.from_numpy(data["x_test"])).numpy()
    got = ort.InferenceSession(str(int8_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"input": data["x_test"]}
    )[0]
    assert np.abs(got - ref).mean() < 0.02 * np.ptp(ref)
    assert parity.max_abs_diff < 0.2 * np.ptp(ref)


def test_int8_accuracy_stays_close(fp32_onnx: Path, int8_onnx: Path, data: dict) -> None:
    def acc(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return accuracy_of(session.run(None, {"input": data["x_test"]})[0], data["y_test"])

    fp32, int8 = acc(fp32_onnx), acc(int8_onnx)
    assert fp32 > 0.9  # the model learned the task, so agreement above is meaningful
    # 256 test rows: 3 points is ~8 rows, more than int8 rounding flips at these margins.
    assert abs(fp32 - int8) <= 0.03


def test_quantization_is_deterministic(fp32_onnx: Path, int8_onnx: Path, data: dict, tmp_path: Path) -> None:
    again = quantize_int8_static(fp32_onnx, tmp_path / "again.onnx", data["x_train"][:256])
    assert sha256_file(again) == sha256_file(int8_onnx)
    # Different calibration data must change the ranges, so equal hashes above are not a constant.
    other = quantize_int8_static(fp32_onnx, tmp_path / "other.onnx", 3 * data["x_train"][:256])
    assert sha256_file(other) != sha256_file(int8_onnx)


def test_per_tensor_also_works(fp32_onnx: Path, data: dict, tmp_path: Path) -> None:
    path = quantize_int8_static(fp32_onnx, tmp_path / "pt.onnx", data["x_train"][:64], per_channel=False)
    assert path.stat().st_size < MAX_SIZE_RATIO * fp32_onnx.stat().st_size


def test_bad_inputs_are_explained(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not found"):
        quantize_int8_static(tmp_path / "missing.onnx", tmp_path / "q.onnx", np.zeros((4, 1, 40)))
    with pytest.raises(ExportError, match="calibration data is empty"):
        quantize_int8_static(fp32_onnx, tmp_path / "q.onnx", np.zeros((0, 1, 40)))
    with pytest.raises(ExportError, match="calibration failed"):
        quantize_int8_static(fp32_onnx, tmp_path / "q.onnx", np.zeros((4, 1, 7)))
    assert not (tmp_path / "q.onnx").exists()
