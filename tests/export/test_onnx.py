"""ONNX export: parity with PyTorch, deterministic bytes, one self-contained file."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.bundle import sha256_file
from export.errors import ParityError
from export.onnx import assert_parity, check_parity, export_onnx

# fp32 on both sides: the only differences are summation order inside the kernels
# (onnxruntime's MLAS vs PyTorch's conv/gemm), i.e. rounding on dot products of at most
# 640 terms with logits of order 10 — about 1e-6 to 1e-5. 1e-4 leaves headroom for that and
# still catches any real export bug (a missing bias, wrong padding, train-mode dropout),
# which moves logits by 1e-2 or more.
FP32_ATOL = 1e-4


def test_fp32_export_matches_pytorch(fp32_onnx: Path, model: nn.Module, data: dict) -> None:
    parity = assert_parity(fp32_onnx, model, data["x_test"], atol=FP32_ATOL, rtol=0.0)
    assert parity.passed
    assert parity.max_abs_diff < FP32_ATOL
    assert parity.top1_agreement == 1.0


def test_parity_fails_for_a_stale_file(fp32_onnx: Path, model: nn.Module, data: dict) -> None:
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head[3].bias[0] += 0.5  # a change the file does not have
    parity = check_parity(fp32_onnx, changed, data["x_test"], atol=FP32_ATOL, rtol=0.0)
    assert not parity.passed
    assert parity.max_abs_diff == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ParityError, match=r"max \|diff\| 0\.5 > atol 0\.0001") as err:
        assert_parity(fp32_onnx, changed, data["x_test"], atol=FP32_ATOL, rtol=0.0)
    assert str(fp32_onnx) in str(err.value)


def test_export_is_deterministic_and_self_contained(model: nn.Module, tmp_path: Path) -> None:
    example = (torch.zeros(1, 1, 40),)
    a = export_onnx(model, example, tmp_path / "a" / "model.onnx")
    b = export_onnx(model, example, tmp_path / "b" / "model.onnx")
    assert sha256_file(a) == sha256_file(b)
    assert sorted(p.name for p in a.parent.iterdir()) == ["model.onnx"]  # no .onnx.data side file


def test_weights_change_the_bytes(model: nn.Module, tmp_path: Path) -> None:
    # Guards the determinism test: equal hashes must come from equal weights, not a constant file.
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head[1].weight[0, 0] += 1.0
    a = export_onnx(model, (torch.zeros(1, 1, 40),), tmp_path / "a.onnx")
    b = export_onnx(changed, (torch.zeros(1, 1, 40),), tmp_path / "b.onnx")
    assert sha256_file(a) != sha256_file(b)


def test_dynamic_batch(fp32_onnx: Path, data: dict) -> None:
    session = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for n in (1, 3, 17):
        (logits,) = session.run(None, {"input": data["x_test"][:n]})
        assert logits.shape == (n, 10)


def test_static_batch_keeps_the_example_shape(model: nn.Module, tmp_path: Path) -> None:
    path = export_onnx(model, (torch.zeros(2, 1, 40),), tmp_path / "m.onnx", dynamic_batch=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 1, 40]


def test_export_uses_eval_mode_and_restores_training(tmp_path: Path, data: dict) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(40, 32), nn.Dropout(0.5), nn.Linear(32, 4)).train()
    path = export_onnx(net, (torch.zeros(1, 1, 40),), tmp_path / "m.onnx")
    # Exported in train mode, dropout would zero half the features and parity would fail.
    assert check_parity(path, net, data["x_test"], atol=FP32_ATOL, rtol=0.0).passed
    assert net.training and net[2].training


def test_float64_input_is_cast(fp32_onnx: Path, model: nn.Module, data: dict) -> None:
    parity = check_parity(fp32_onnx, model, data["x_test"].astype(np.float64), atol=FP32_ATOL, rtol=0.0)
    assert parity.passed
