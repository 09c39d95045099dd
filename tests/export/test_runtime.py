"""The device runtime: no torch, same answers as onnxruntime, batching, refusal of odd bundles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export import runtime
from export.bundle import write_bundle
from export.errors import BundleError, ExportError

MANIFEST = {
    "model": {"file": "model.onnx", "format": "onnx", "precision": "fp32"},
    "input": {"name": "input", "shape": [None, 1, 40], "dtype": "float32"},
    "output": {"name": "logits"},
    "labels": [str(k) for k in range(10)],
}


@pytest.fixture
def bundle(fp32_onnx: Path, tmp_path: Path) -> Path:
    return write_bundle(
        tmp_path / "end", files={"model.onnx": fp32_onnx}, manifest=MANIFEST, report={}, report_md=""
    )


def test_import_runtime_loads_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys, export.runtime; "
        "print(sorted(m for m in ('torch', 'compress', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_subprocess_check_can_fail(tmp_path: Path) -> None:
    # Same probe after importing a torch module: proves the check above would see torch.
    code = "import sys, export.onnx; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "True"


def test_predict_equals_a_direct_onnxruntime_run(bundle: Path, fp32_onnx: Path, data: dict) -> None:
    loaded = runtime.load(bundle, threads=1)
    got = loaded.predict(data["x_test"])
    # Same file, same thread count, same single batch: the same kernels run, so bit-equal.
    direct = runtime.make_session(fp32_onnx, threads=1).run(["logits"], {"input": data["x_test"]})[0]
    assert got.dtype == np.float32 and got.shape == (len(data["x_test"]), 10)
    np.testing.assert_array_equal(got, direct)
    # And a default-options session agrees to float rounding (its thread count may differ).
    default = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, default.run(None, {"input": data["x_test"]})[0], atol=1e-5)


def test_batches_give_the_same_result_as_one_batch(bundle: Path, data: dict) -> None:
    loaded = runtime.load(bundle)
    whole = loaded.predict(data["x_test"], batch_size=1024)
    batched = loaded.predict(data["x_test"], batch_size=7)
    pieces = list(loaded.iter_predict(data["x_test"], batch_size=100))
    assert [len(p) for p in pieces] == [100, 100, 56]
    # Rows are independent, but the GEMM kernel may block a batch of 7 differently from 256:
    # only float rounding may differ (~1e-6 on logits of order 10).
    np.testing.assert_allclose(batched, whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=1e-5)


def test_input_is_cast_to_the_manifest_dtype(bundle: Path, data: dict) -> None:
    loaded = runtime.load(bundle)
    x64 = data["x_test"][:8].astype(np.float64)
    np.testing.assert_array_equal(loaded.predict(x64), loaded.predict(data["x_test"][:8]))


def test_empty_input_gives_empty_logits(bundle: Path) -> None:
    assert runtime.load(bundle).predict(np.zeros((0, 1, 40))).shape == (0, 10)


def test_wrong_input_shape_is_explained(bundle: Path) -> None:
    with pytest.raises(ExportError, match=r"does not fit the bundle's input shape \[None, 1, 40\]"):
        runtime.load(bundle).predict(np.zeros((4, 40)))


def test_labels_and_session(bundle: Path) -> None:
    loaded = runtime.load(bundle)
    assert loaded.labels == [str(k) for k in range(10)]
    assert loaded.path == bundle
    assert loaded.session.get_inputs()[0].name == "input"


@pytest.mark.parametrize("fmt", ["tflite", "openvino"])
def test_other_formats_are_refused(fp32_onnx: Path, tmp_path: Path, fmt: str) -> None:
    # a manifest whose format does not match the file (or that no runtime here runs) is refused up front
    manifest = {**MANIFEST, "model": {"file": "model.onnx", "format": fmt, "precision": "int8"}}
    out = write_bundle(
        tmp_path / "b", files={"model.onnx": fp32_onnx}, manifest=manifest, report={}, report_md=""
    )
    with pytest.raises(BundleError, match=f"model format '{fmt}' of file 'model.onnx' is not supported"):
        runtime.load(out)


def test_manifest_that_names_the_wrong_input_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    manifest = {**MANIFEST, "input": {**MANIFEST["input"], "name": "x"}}
    out = write_bundle(
        tmp_path / "b", files={"model.onnx": fp32_onnx}, manifest=manifest, report={}, report_md=""
    )
    with pytest.raises(BundleError, match="names input 'x'"):
        runtime.load(out)


def test_unlisted_model_file_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    out = write_bundle(
        tmp_path / "b", files={"other.onnx": fp32_onnx}, manifest=MANIFEST, report={}, report_md=""
    )
    (out / "model.onnx").write_bytes(fp32_onnx.read_bytes())  # present, but never hashed
    with pytest.raises(BundleError, match="not listed in the manifest"):
        runtime.load(out)


def test_garbage_model_with_matching_hash_is_explained(tmp_path: Path) -> None:
    out = write_bundle(
        tmp_path / "b", files={"model.onnx": b"not onnx"}, manifest=MANIFEST, report={}, report_md=""
    )
    assert json.loads((out / "manifest.json").read_text())["files"]["model.onnx"]["bytes"] == 8
    with pytest.raises(BundleError, match="onnxruntime cannot open 'model.onnx'"):
        runtime.load(out)


def test_exact_int8_kernels_where_the_fast_ones_can_saturate(fp32_onnx: Path, monkeypatch) -> None:
    """x86-64 without VNNI gets onnxruntime's exact int8 kernels; VNNI hosts and ARM keep the fast ones."""
    key = "session.x64quantprecision"

    def entry(options: ort.SessionOptions) -> str | None:
        try:
            return options.get_session_config_entry(key)
        except RuntimeError:  # onnxruntime raises for a key never set
            return None

    assert runtime.int8_sums_can_saturate("flags\t: fpu sse2 avx2 avx512f avx512bw\n", "x86_64")
    assert runtime.int8_sums_can_saturate("flags\t: fpu avx2\n", "AMD64")
    assert not runtime.int8_sums_can_saturate("flags\t: fpu avx2 avx_vnni\n", "x86_64")
    assert not runtime.int8_sums_can_saturate("flags\t: fpu avx512bw avx512_vnni\n", "x86_64")
    assert not runtime.int8_sums_can_saturate("Features\t: fp asimd asimddp\n", "aarch64")
    for saturates in (True, False):
        monkeypatch.setattr(runtime, "int8_sums_can_saturate", lambda s=saturates: s)
        assert (entry(runtime.make_session(fp32_onnx).get_session_options()) == "1") is saturates
    assert entry(runtime.make_session(fp32_onnx, exact_int8=True).get_session_options()) == "1"
