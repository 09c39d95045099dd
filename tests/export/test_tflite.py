"""LiteRT export: fp32 and PT2E int8 .tflite executed in ai-edge-litert and compared with PyTorch,
the int8 input/output handling of the runtime, .tflite bundles, and refusal of a changed byte.

One conversion of each kind per session (a litert-torch conversion takes ~10 s on 2 cores)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from export import runtime
from export.bundle import write_bundle
from export.errors import BundleError, ExportError, ParityError
from export.inspect import PARITY_FILE, describe, parity_npz, rerun_parity
from export.litert import TFLiteSession
from export.measure import latency_ms, tflite_stats
from export.tflite import assert_parity_tflite, check_parity_tflite, export_tflite

from .conftest import LENGTH, guarded

EXAMPLE = (torch.zeros(1, 1, LENGTH),)


@pytest.fixture(scope="module")
def fp32_tflite(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with guarded(tmp_path_factory):
        return export_tflite(model, EXAMPLE, tmp_path_factory.mktemp("tfl") / "model.fp32.tflite")


@pytest.fixture(scope="module")
def int8_tflite(model, data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with guarded(tmp_path_factory):
        return export_tflite(model, EXAMPLE, tmp_path_factory.mktemp("tfl8") / "model.tflite",
                             calib=data["x_train"][:128])


def test_fp32_matches_pytorch(fp32_tflite: Path, model, data) -> None:
    # Same fp32 arithmetic in another kernel order (XNNPACK): differences are float rounding, ~1e-6;
    # 1e-4 / 1e-3 is the targets' own tolerance (hw_targets/*.yaml).
    parity = assert_parity_tflite(fp32_tflite, model, data["x_test"], atol=1e-4, rtol=1e-3)
    assert parity.top1_agreement == 1.0 and parity.max_abs_diff < 1e-4


def test_stale_file_fails_parity(fp32_tflite: Path, model, data) -> None:
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head[-1].bias.add_(0.5)  # every logit moves by 0.5: far outside 1e-4
    with pytest.raises(ParityError, match="max |diff| 0.5"):
        assert_parity_tflite(fp32_tflite, changed, data["x_test"][:8], atol=1e-4, rtol=0.0)


def test_int8_agrees_and_is_small(fp32_tflite: Path, int8_tflite: Path, model, data) -> None:
    parity = check_parity_tflite(int8_tflite, model, data["x_test"], atol=float("inf"), rtol=float("inf"))
    # 0.97 is the targets' quantized_top1_agreement; the float model's margins are wide (96 % accuracy).
    assert parity.top1_agreement >= 0.97
    fp32, int8 = tflite_stats(fp32_tflite), tflite_stats(int8_tflite)
    # 52,170 weights: 4 bytes each in fp32, 1 in int8 (+ int32 biases, per-channel scales, graph): <= 0.3x.
    assert int8["bytes"] <= 0.3 * fp32["bytes"], (int8["bytes"], fp32["bytes"])
    assert fp32["params"] == int8["params"] == sum(p.numel() for p in model.parameters())
    assert int8["precision_counts"]["int8"] >= 52_000 and "float32" not in int8["precision_counts"]


def test_int8_io_is_quantized_by_the_runtime(int8_tflite: Path, data) -> None:
    session = TFLiteSession(int8_tflite)
    scale, zero = session.input_quantization
    assert session.precision == "int8" and scale > 0 and -128 <= zero <= 127
    x = data["x_test"][:7]
    batched = session.run(None, {"input": x})[0]
    one_by_one = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    assert batched.dtype == np.float32 and batched.shape == (7, 10)
    np.testing.assert_array_equal(batched, one_by_one)  # looping over the fixed batch changes nothing
    assert session.run(None, {"input": x[:0]})[0].shape == (0, 10)


def test_latency_measured_in_litert(int8_tflite: Path, data) -> None:
    timing = latency_ms(int8_tflite, data["x_test"][:1], repeats=5, warmup=2)
    assert timing.median_ms > 0 and timing.repeats == 5


def _bundle(path: Path, model_file: Path, ref: np.ndarray, x: np.ndarray, precision: str) -> Path:
    manifest = {
        "model": {"file": "model.tflite", "format": "tflite", "precision": precision},
        "input": {"name": "input", "shape": [None, 1, LENGTH], "dtype": "float32"},
        "output": {"name": "logits"},
        "labels": [str(k) for k in range(10)],
        "target": {"name": "rpi4", "tolerance": {"atol": 1e-4, "rtol": 1e-3, "quantized_top1_agreement": 0.97}},
    }
    return write_bundle(path, files={"model.tflite": model_file, PARITY_FILE: parity_npz(x, ref)},
                        manifest=manifest, report={"models": []}, report_md="")


def test_tflite_bundle_predicts_and_refuses_a_changed_byte(int8_tflite: Path, model, data, tmp_path: Path) -> None:
    x = data["x_test"][:16]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    root = _bundle(tmp_path / "end", int8_tflite, ref, x, "int8")
    bundle = runtime.load(root)
    logits = bundle.predict(data["x_test"], batch_size=50)
    expected = TFLiteSession(int8_tflite).run(None, {"input": data["x_test"]})[0]
    np.testing.assert_array_equal(logits, expected)
    assert [b.shape[0] for b in bundle.iter_predict(x, batch_size=6)] == [6, 6, 4]
    info = describe(root)
    assert info["models"][0]["format"] == "tflite" and info["models"][0]["operators"]["FULLY_CONNECTED"] == 2
    parity = rerun_parity(root)
    assert parity is not None and parity["passed"] and parity["samples"] == 16

    blob = bytearray((root / "model.tflite").read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit of one byte
    (root / "model.tflite").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="model.tflite' does not match"):
        runtime.load(root)
    with pytest.raises(BundleError, match="does not match"):
        describe(root)


def test_minmax_calibration_observes_other_ranges(int8_tflite: Path, model, data, tmp_path: Path) -> None:
    """`calibration="minmax"` swaps PT2E's HistogramObserver (MSE, the default) for MinMaxObserver: a file
    that still agrees with PyTorch (same 0.97 as above) but carries other activation scales."""
    minmax = export_tflite(model, EXAMPLE, tmp_path / "minmax.tflite", calib=data["x_train"][:128],
                           calibration="minmax")
    parity = check_parity_tflite(minmax, model, data["x_test"], atol=float("inf"), rtol=float("inf"))
    assert parity.top1_agreement >= 0.97
    assert minmax.read_bytes() != int8_tflite.read_bytes()
    with pytest.raises(ExportError, match="no PT2E observer"):
        export_tflite(model, EXAMPLE, tmp_path / "x.tflite", calib=data["x_train"][:8], calibration="entropy")
