"""Target limits on the exported file: bytes vs storage, peak live activations vs RAM."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.limits import LimitError, check_limits, peak_activation_bytes


def test_peak_activation_of_a_known_graph(fp32_onnx: Path) -> None:
    # TinyCNN at batch 1, float32: Conv(1->32) -> Relu -> Conv(32->64) -> Relu -> MaxPool(4) -> ...
    # The peak is at the second Relu: its input and output, 64 x 40 floats each, are live together
    # (the first Relu's output died at the second Conv): 2 * 64 * 40 * 4 = 20,480 bytes.
    assert peak_activation_bytes(fp32_onnx) == 2 * 64 * 40 * 4


def test_fits(fp32_onnx: Path) -> None:
    limits = check_limits(fp32_onnx, storage_kb=1024, ram_kb=1024, target="t")
    assert limits.model_bytes == fp32_onnx.stat().st_size and limits.peak_activation_bytes == 20_480


def test_over_storage_names_the_numbers_and_the_fix(fp32_onnx: Path) -> None:
    kib = fp32_onnx.stat().st_size / 1024
    with pytest.raises(LimitError) as err:
        check_limits(fp32_onnx, storage_kb=16, ram_kb=1024, target="tiny_mcu", where="variant end")
    text = str(err.value)
    assert f"{kib:,.1f} KiB" in text and "storage budget of 16 KiB" in text and "tiny_mcu" in text
    assert text.startswith("variant end:") and "Fix:" in text and "ptq_int8" in text


def test_over_ram(fp32_onnx: Path) -> None:
    with pytest.raises(LimitError, match=r"about 20.0 KiB of activations .* has 8 KiB of RAM"):
        check_limits(fp32_onnx, storage_kb=1024, ram_kb=8, target="t")
