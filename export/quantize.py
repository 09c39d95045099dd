"""Static int8 post-training quantization of an ONNX file with `onnxruntime.quantization`.

The output stores int8 weights on disk (QDQ format: int8 initializers feeding
DequantizeLinear), so it is really ~4x smaller, not a fake-quantized fp32 file. Whether it
is faster depends on the runtime: measure it (see `export.measure`), never assume it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from export.errors import ExportError

__all__ = ["quantize_int8_static"]


class _BatchReader(CalibrationDataReader):
    """Feeds `calib_x` to the calibrator in fixed batches, in order, so ranges are reproducible."""

    def __init__(self, input_name: str, calib_x: np.ndarray, batch_size: int) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: calib_x[i : i + batch_size]} for i in range(0, len(calib_x), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8_static(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calib_x: np.ndarray,
    *,
    per_channel: bool = True,
    batch_size: int = 64,
) -> Path:
    """Quantize `src` to int8 at `dst`: symmetric int8 weights, int8 activations, MinMax ranges.

    Runs `quant_pre_process` (shape inference and graph optimization) first, then
    `quantize_static` in QDQ format, calibrated on `calib_x` (float inputs, first axis =
    samples) in batches of `batch_size`. Intermediate files go to a temporary folder that is
    removed; the same inputs give the same bytes.

    >>> import tempfile, pathlib, numpy as np
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     src = tiny_onnx(pathlib.Path(d) / "m.onnx")
    ...     q = quantize_int8_static(src, pathlib.Path(d) / "m.int8.onnx", np.ones((8, 4), np.float32))
    ...     sorted(p.name for p in q.parent.iterdir())
    ['m.int8.onnx', 'm.onnx']
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ExportError(
            "ONNX file to quantize not found", where=str(src), fix="export the fp32 model first"
        )
    calib_x = np.asarray(calib_x)
    if calib_x.ndim < 1 or len(calib_x) == 0:
        raise ExportError(
            f"calibration data is empty (shape {list(calib_x.shape)})",
            where=str(src),
            fix="pass a few hundred representative inputs as calib_x, first axis = samples",
        )
    if batch_size < 1:
        raise ExportError(f"batch_size must be at least 1, got {batch_size}", fix="pass batch_size=1 or more")
    calib_x = calib_x.astype(np.float32, copy=False)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgetier-quant-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        _step("pre-processing (shape inference, optimization)", src, quant_pre_process, src, pre)
        input_name = _graph_input(pre)
        reader = _BatchReader(input_name, calib_x, batch_size)
        _step(
            "static int8 quantization",
            src,
            quantize_static,
            pre,
            out,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        shutil.copyfile(out, dst)
    return dst


def _graph_input(path: Path) -> str:
    model = onnx.load(os.fspath(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in weights]
    if len(names) != 1:
        raise ExportError(
            f"static quantization here supports one model input, the model has {names}",
            where=str(path),
            fix="export a single-input model (or each segment separately)",
        )
    return names[0]


def _step(what: str, src: Path, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as err:  # onnxruntime raises many unrelated types; all mean this step failed
        raise ExportError(
            f"{what} failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
            where=str(src),
            fix="check that calib_x has the model's input shape and that onnxruntime runs the fp32 file",
        ) from err
