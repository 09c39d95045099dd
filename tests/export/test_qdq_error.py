"""export.qdq_error: undoing a QDQ file's rounding, tensor by tensor, gives back the fp32 outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from export import qdq_error
from export.errors import ExportError


def test_undoing_every_rounding_gives_back_fp32(fp32_onnx: Path, int8_onnx: Path, data: dict) -> None:
    x = data["x_train"][:64]  # calibration inputs (conftest's int8_onnx): nothing outside the ranges to clip
    split = qdq_error.error_split(fp32_onnx, int8_onnx, x)
    assert split["activation_tensors"] > 0 and split["weight_tensors"] > 0
    ref = qdq_error._run(fp32_onnx, x)
    scale = float(np.sqrt(np.mean(ref ** 2)))
    # no int8 rounding is left: fp32 up to the int32 bias grid and float reassociation
    assert split["clipping_only"] < 1e-4 * scale  # the int32 bias grid (input scale x weight scale) is left
    assert split["int8"] > 100 * split["clipping_only"]
    # each half alone is a real part of the error, not zero and not a blow-up (a dropped ReLU would be)
    for part in ("weights_only", "activations_only"):
        assert 10 * split["clipping_only"] < split[part] < 3 * split["int8"], split


def test_per_tensor_errors_name_every_quantized_tensor(fp32_onnx: Path, int8_onnx: Path, data: dict) -> None:
    model = onnx.load(str(int8_onnx))
    errors = qdq_error.tensor_errors(fp32_onnx, int8_onnx, data["x_train"][:32])  # calibration inputs: no clipping
    assert set(qdq_error.activation_pairs(model)) < set(errors)
    unrounded = errors.pop("(clipping only)")
    assert all(e > unrounded for e in errors.values()), errors


def test_unknown_tensor_is_refused(int8_onnx: Path) -> None:
    with pytest.raises(ExportError, match="not in the graph"):
        qdq_error.unround_activations(onnx.load(str(int8_onnx)), ["no_such_node"])
