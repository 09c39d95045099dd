"""export.int8_bias: the int8 file's int32 biases are moved back to the fp32 file's channel means."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.errors import ExportError
from export.int8_bias import correct_int8_biases
from export.runtime import make_session


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    return make_session(path).run(None, {"input": x})[0]


def test_a_shifted_bias_is_moved_back(fp32_onnx: Path, int8_onnx: Path, data: dict, tmp_path: Path) -> None:
    """Corrupt the last layer's int32 bias by a large offset: the correction must take it out again."""
    model = onnx.load(str(int8_onnx))
    biases = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32 and i.name.endswith("_quantized")]
    last = biases[-1]
    shifted = numpy_helper.to_array(last).astype(np.int64) + 2_000_000_000 // 100_000  # +20000 grid steps
    last.CopyFrom(numpy_helper.from_array(shifted.astype(np.int32), last.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    calib = data["x_train"][:256]
    ref, before = _logits(fp32_onnx, calib), _logits(broken, calib)
    report = correct_int8_biases(fp32_onnx, broken, tmp_path / "fixed.onnx", calib, passes=2)
    after = _logits(tmp_path / "fixed.onnx", calib)
    shift_before = np.abs((before - ref).mean(0)).mean()
    shift_after = np.abs((after - ref).mean(0)).mean()
    assert report["layers"] == len(biases)
    assert shift_after < 0.05 * shift_before, (shift_before, shift_after)
    # and the all-int8 file's own shift is not made worse than it was before corruption
    assert shift_after <= 2 * np.abs((_logits(int8_onnx, calib) - ref).mean(0)).mean() + 1e-3


def test_refuses_a_file_without_int32_biases(fp32_onnx: Path, data: dict, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="int32 bias"):
        correct_int8_biases(fp32_onnx, fp32_onnx, tmp_path / "x.onnx", data["x_train"][:8])
