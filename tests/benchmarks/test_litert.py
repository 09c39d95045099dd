"""Issue 6's "Done when" numbers for LiteRT: the static int8 .tflite of the MNIST-1D reference resnet1d
(width 64, fixture `dense_resnet1d`) exported for the Raspberry Pi 4 target (runtime litert).

    pytest -m benchmark tests/benchmarks/test_litert.py -s

Measured through the pipeline's own `deploy` (the `measure` helper): litert-torch fp32 .tflite checked
against PyTorch at the target's tolerance, then PT2E int8 calibrated on 256 calib samples; accuracy is
the int8 file's, run in ai-edge-litert on the 2,000 test samples; the fp32 bytes are the fp32 .tflite
of the same model, written by the same export.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from compress.core.technique import ExportPlan
from compress.datasets import Dataset
from tests.benchmarks.conftest import measure

pytestmark = pytest.mark.benchmark


def test_int8_tflite_resnet1d(fresh_dense: nn.Module, mnist1d: Dataset, tmp_path: Path) -> None:
    entry = measure(fresh_dense, mnist1d, tmp_path, name="end", target="rpi4", formats=("tflite",),
                    export_plan=ExportPlan(quantize="int8_static", calib_samples=256))
    fp32_bytes = entry["parity"]["fp32_bytes"]
    ratio = entry["bytes"] / fp32_bytes
    drop_pt = 100 * (entry["torch_accuracy"] - entry["accuracy"])
    print(f"\nresnet1d int8 .tflite (rpi4, LiteRT): accuracy {entry['accuracy']:.2%} in LiteRT vs "
          f"{entry['torch_accuracy']:.2%} PyTorch fp32 ({drop_pt:+.2f} pt drop; bar <= 0.5 pt)\n"
          f"  file {entry['bytes']:,} B vs fp32 .tflite {fp32_bytes:,} B = {ratio:.3f}x (bar <= 0.3x)\n"
          f"  LiteRT latency {entry['latency_ms']:.3f} ms median (p90 {entry['latency_p90_ms']:.3f}), batch 1, "
          f"{entry['latency_threads']} thread; roofline estimate on rpi4 {entry['estimated_latency_ms']:.3f} ms\n"
          f"  top-1 agreement with PyTorch {entry['parity']['top1_agreement']:.1%}; peak activations "
          f"{entry['limits']['peak_activation_bytes']:,} B")
    assert entry["format"] == "tflite" and entry["runtime"] == "litert" and entry["precision"] == "int8"
    assert (tmp_path / "end" / "model.tflite").is_file()
    assert drop_pt <= 0.5
    assert ratio <= 0.3
    assert entry["latency_ms"] > 0
