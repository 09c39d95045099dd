"""Ship a split segment in its tier's format: .tflite for a LiteRT target, else the ONNX segment itself.

The segments are cut from one ONNX graph (export.split). For a target whose `export_format` is
`tflite`, the ONNX segment goes back to PyTorch (export.onnx_torch, onnx2torch) and through the
project's LiteRT path (export.tflite, litert-torch, fp32), and the .tflite file is checked against
the ONNX segment it came from, in LiteRT itself, on the samples the crossing tensor is calibrated
on, within the target's tolerance. A segment that does not convert or does not match ships as
.onnx, and the manifest says so and why (`partition.format_note`): never a silent substitution.

A .tflite graph takes one input (export.litert), so only segments with one input (the end
segment, which reads the model's input) are converted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError

__all__ = ["ShippedSegment", "ship_segment"]

# hw_targets/*.yaml state atol 1e-4 / rtol 1e-3 for every target; used when a target entry has none
DEFAULT_TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}


@dataclass(frozen=True)
class ShippedSegment:
    """The file a tier's bundle carries for its segment, its manifest `model` entry, and a note when it is
    not in the target's own format."""

    path: Path
    model: dict[str, str]
    note: str | None = None


def ship_segment(onnx_path: Path, target: Mapping[str, Any], samples: np.ndarray, out_dir: Path) -> ShippedSegment:
    """The segment as its target wants it (see the module docstring); `samples` are inputs of this segment.

    >>> import tempfile, pathlib, numpy as np
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     s = ship_segment(tiny_onnx(pathlib.Path(d) / "m.onnx"), {"export_format": "onnx"}, np.zeros((1, 4)), d)
    >>> s.model, s.note
    ({'file': 'model.onnx', 'format': 'onnx', 'precision': 'fp32'}, None)
    """
    onnx_entry = {"file": "model.onnx", "format": "onnx", "precision": "fp32"}
    if target.get("export_format") != "tflite":
        return ShippedSegment(Path(onnx_path), onnx_entry)
    try:
        path = _to_tflite(Path(onnx_path), samples, Path(out_dir), target.get("tolerance") or DEFAULT_TOLERANCE)
    except ExportError as err:
        note = (f"target {target.get('name', '?')} runs .tflite, but this segment ships as .onnx: {err.problem}. "
                "Run it with onnxruntime on the device, or re-plan with a cut LiteRT can convert.")
        return ShippedSegment(Path(onnx_path), onnx_entry, note)
    return ShippedSegment(path, {"file": "model.tflite", "format": "tflite", "precision": "fp32"})


def _to_tflite(onnx_path: Path, samples: np.ndarray, out_dir: Path, tolerance: Mapping[str, float]) -> Path:
    import torch

    from export.litert import TFLiteSession
    from export.onnx_torch import onnx_to_torch
    from export.runtime import make_session
    from export.tflite import export_tflite

    reference = make_session(onnx_path)
    if len(reference.get_inputs()) != 1:
        raise ExportError(f"the segment reads {len(reference.get_inputs())} tensors and a .tflite graph takes one",
                          where=str(onnx_path), fix="cut so that the segment reads one tensor")
    x = np.asarray(samples, np.float32)
    module = onnx_to_torch(onnx_path)
    path = export_tflite(module, (torch.from_numpy(x[:1]),), out_dir / f"{onnx_path.stem}.tflite")
    expected = reference.run(None, {reference.get_inputs()[0].name: x})
    got = TFLiteSession(path).run(None, {"input": x})
    atol, rtol = float(tolerance.get("atol", 1e-4)), float(tolerance.get("rtol", 1e-3))
    for k, (want, have) in enumerate(zip(expected, got, strict=True)):
        if want.shape != have.shape or not np.allclose(have, want, atol=atol, rtol=rtol):
            worst = float(np.max(np.abs(have - want))) if want.shape == have.shape else float("nan")
            raise ExportError(f"the .tflite segment's output {k} differs from the ONNX segment's by up to {worst:.3g} "
                              f"(tolerance atol {atol:g}, rtol {rtol:g})", where=os.fspath(path),
                              fix="ship the segment as .onnx")
    return path
