"""Static int8 post-training quantization of an ONNX file with `onnxruntime.quantization`.

The output stores int8 weights on disk (QDQ format: int8 initializers feeding
DequantizeLinear), so it is really ~4x smaller, not a fake-quantized fp32 file. Whether it
is faster depends on the runtime: measure it (see `export.measure`), never assume it.

Activations are int8 by default (onnxruntime's recommended S8S8 QDQ) or uint8 (`activations="uint8"`).
On x86 onnxruntime runs int8 convolutions with uint8 activations: it rewrites each int8
QuantizeLinear -> DequantizeLinear pair to uint8 before fusing the QDQ groups into QLinearConv, but
not a pair whose tensor feeds two consumers (a residual block's input feeds conv1 and the shortcut),
so those convolutions stay float behind Dequantize/Quantize nodes. Measured on the flagship's edge
model (resnet1d, 60 % pruned, onnxruntime 1.32, AVX2): int8 activations fuse 3 of 10 convolutions
and run at 0.34x the fp32 cloud model; uint8 activations fuse all 10 and run at 0.16x, same size. On
x86 without VNNI onnxruntime sums uint8 x int8 products pairwise in int16, which can saturate: measure
the accuracy of the file (flagship edge: -0.15 pt mean over three seeds against +0.19 with int8).
That holds for int8 activations too, since onnxruntime runs them as uint8: `export.runtime.make_session`
therefore turns on onnxruntime's exact int8 kernels (`session.x64quantprecision`) on x86-64 CPUs
without VNNI (`int8_sums_can_saturate`); the flagship numbers above predate that.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from export.calibrate import CALIBRATIONS, calibrate
from export.errors import ExportError

__all__ = ["ACTIVATIONS", "Int8Quantizer", "quantize_int8_static"]


def quantize_int8_static(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calib_x: np.ndarray,
    *,
    per_channel: bool = True,
    calibration: str = "minmax",
    nodes_to_exclude: Sequence[str] = (),
    batch_size: int = 64,
    activations: str = "int8",
) -> Path:
    """Quantize `src` to int8 at `dst`: symmetric int8 weights, `activations` (int8 or uint8) activations,
    ranges by `calibration`.

    Runs `quant_pre_process` (shape inference and graph optimization, which folds BatchNorm into
    the convolutions) first, then calibrates activation ranges on `calib_x` (float inputs, first
    axis = samples) with `calibration` (one of `export.calibrate.CALIBRATIONS`), then
    `quantize_static` in QDQ format. Nodes named in `nodes_to_exclude` (names in the
    pre-processed graph, see `Int8Quantizer.nodes`) stay fp32. Intermediate files go to a
    temporary folder that is removed; the same inputs give the same bytes.

    >>> import tempfile, pathlib, numpy as np
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     src = tiny_onnx(pathlib.Path(d) / "m.onnx")
    ...     q = quantize_int8_static(src, pathlib.Path(d) / "m.int8.onnx", np.ones((8, 4), np.float32))
    ...     sorted(p.name for p in q.parent.iterdir())
    ['m.int8.onnx', 'm.onnx']
    """
    with Int8Quantizer(src, calib_x, calibration=calibration, batch_size=batch_size) as quantizer:
        return quantizer.write(dst, per_channel=per_channel, nodes_to_exclude=nodes_to_exclude,
                               activations=activations)


class Int8Quantizer:
    """One pre-processing and one calibration of an fp32 ONNX file, then any number of int8 files from it.

    Use as a context manager (its temporary folder is removed on exit). `nodes` lists the
    quantizable nodes (Conv, Gemm, MatMul) of the pre-processed graph, in graph order: the names
    `write(..., nodes_to_exclude=...)` accepts.

    >>> import tempfile, pathlib, numpy as np
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d, Int8Quantizer(tiny_onnx(pathlib.Path(d) / "m.onnx"),
    ...                                                          np.ones((8, 4), np.float32)) as q:
    ...     len(q.nodes), q.write(pathlib.Path(d) / "fp.onnx", nodes_to_exclude=q.nodes).name
    (1, 'fp.onnx')
    """

    def __init__(self, src: str | os.PathLike[str], calib_x: np.ndarray, *, calibration: str = "minmax",
                 percentile: float = 99.999, batch_size: int = 64) -> None:
        self.src = Path(src)
        if not self.src.is_file():
            raise ExportError(
                "ONNX file to quantize not found", where=str(self.src), fix="export the fp32 model first"
            )
        calib_x = np.asarray(calib_x)
        if calib_x.ndim < 1 or len(calib_x) == 0:
            raise ExportError(
                f"calibration data is empty (shape {list(calib_x.shape)})",
                where=str(self.src),
                fix="pass a few hundred representative inputs as calib_x, first axis = samples",
            )
        if batch_size < 1:
            raise ExportError(f"batch_size must be at least 1, got {batch_size}", fix="pass batch_size=1 or more")
        if calibration not in CALIBRATIONS:
            raise ExportError(f"unknown calibration {calibration!r}", where=str(self.src),
                              fix=f"choose one of {', '.join(CALIBRATIONS)}")
        self.calibration = calibration
        self._tmp = tempfile.TemporaryDirectory(prefix="edgetier-quant-")
        tmp = Path(self._tmp.name)
        self.pre, self.cache = tmp / "pre.onnx", tmp / "ranges.json"
        try:
            _step("pre-processing (shape inference, optimization)", self.src, quant_pre_process, self.src, self.pre)
            self.input_name = _graph_input(self.pre)
            _step(f"{calibration} calibration", self.src, calibrate, self.pre, self.input_name,
                  calib_x.astype(np.float32, copy=False), self.cache, method=calibration, percentile=percentile,
                  batch_size=batch_size)
        except BaseException:
            self._tmp.cleanup()
            raise
        graph = onnx.load(os.fspath(self.pre), load_external_data=False).graph
        self.nodes: tuple[str, ...] = tuple(n.name for n in graph.node if n.op_type in _WEIGHTED_OPS)
        self.all_nodes: frozenset[str] = frozenset(n.name for n in graph.node)

    def write(self, dst: str | os.PathLike[str], *, per_channel: bool = True,
              nodes_to_exclude: Sequence[str] = (), extra_options: dict | None = None,
              activations: str = "int8") -> Path:
        """The int8 QDQ file at `dst`; `nodes_to_exclude` stay fp32 (their inputs and outputs too);
        activations stored as `activations` (one of `ACTIVATIONS`), weights always symmetric int8."""
        if activations not in ACTIVATIONS:
            raise ExportError(f"unknown activation type {activations!r}", where=str(self.src),
                              fix=f"choose one of {', '.join(ACTIVATIONS)}")
        unknown = sorted(set(nodes_to_exclude) - self.all_nodes)
        if unknown:
            raise ExportError(f"nodes to keep in fp32 not in the graph: {unknown}", where=str(self.src),
                              fix=f"use names from the pre-processed graph, e.g. {list(self.nodes[:3])}")
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        out = Path(self._tmp.name) / "int8.onnx"
        _step(
            "static int8 quantization",
            self.src,
            quantize_static,
            self.pre,
            out,
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=ACTIVATIONS[activations],
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,  # the cache holds final ranges, whatever computed them
            calibration_cache_path=self.cache,
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, **(extra_options or {})},
        )
        shutil.copyfile(out, dst)
        return dst

    def __enter__(self) -> Int8Quantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
# activation storage types: int8 (zero point near 0 for symmetric ranges) or uint8 (see the module docstring)
ACTIVATIONS = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


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
