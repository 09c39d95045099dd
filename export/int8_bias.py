"""Empirical bias correction of a static int8 ONNX file, measured in the file itself (label-free).

`compress.quant.equalize.bias_correct` removes the mean output shift that *weight* rounding causes,
analytically, in the float model. What is left after it is the shift that activation rounding and
clipping cause, and the shifts each layer passes on to the next through ReLU6 and the other
nonlinearities: AIMET calls the fix *empirical* bias correction. Here it runs on the exported QDQ
file with onnxruntime: each Conv / Gemm output (before its QuantizeLinear) is averaged per channel
over the calibration inputs, in the int8 file and in the fp32 file it was made from, and the
layer's int32 bias moves by the difference (in its own grid, scale = input scale x weight scale).
Layers are corrected one at a time in graph order (each measured with the layers before it already
corrected: AIMET's order; correcting all at once from one measurement overshoots and diverges on
EfficientNet-Lite0), one onnxruntime run of the calibration inputs per layer; `passes` repeats that.

Measured on EfficientNet-Lite0 (tests/benchmarks/test_ptq.py, 2026-12-07, one pass, 130 calibration
views, ~1 min): after percentile calibration it cuts the logit error on the held-out photos from 0.208
to 0.102 rms and lifts top-1 agreement on other views of the calibration photos from 66 % to 94 %, but
not on the held-out photos (93.0 % -> 93.7 %; CLE + analytic bias correction: 97.0 %): the means
it matches are those of the calibration photos (textures, scenery), not of objects.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.errors import ExportError
from export.runtime import make_session

__all__ = ["correct_int8_biases"]


def _pre_processed(fp32_path: Path, tmp: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import quant_pre_process

    pre = tmp / "pre.onnx"
    quant_pre_process(fp32_path, pre)  # what export.quantize quantized: same node names
    return onnx.load(os.fspath(pre))


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    model = copy.deepcopy(model)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in have)
    return model.SerializeToString()


def _channel_means(model_bytes: bytes, tmp: Path, names: list[str], x: np.ndarray, batch_size: int
                   ) -> dict[str, np.ndarray]:
    path = tmp / "probe.onnx"
    path.write_bytes(model_bytes)
    session = make_session(path)
    feed = session.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i in range(0, len(x), batch_size):
        outs = session.run(names, {feed: x[i:i + batch_size]})
        for name, out in zip(names, outs, strict=True):
            axes = (0, *range(2, out.ndim))  # per channel: over samples and positions
            sums[name] = sums.get(name, 0) + out.astype(np.float64).sum(axes)
            counts[name] = counts.get(name, 0) + out.size // out.shape[1]
    return {k: v / counts[k] for k, v in sums.items()}


def correct_int8_biases(fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str],
                        dst: str | os.PathLike[str], calib_x: np.ndarray, *, passes: int = 1,
                        batch_size: int = 32) -> dict[str, object]:
    """Write `int8_path` with empirically corrected int32 biases to `dst`; return what was done.

    `fp32_path` is the fp32 ONNX file `int8_path` was quantized from (`export.quantize`), `calib_x`
    unlabeled inputs (the calibration inputs). The report holds the layers corrected and, per pass,
    the mean absolute per-channel output shift left (before that pass's correction), relative to the
    layers' output scale.
    """
    if passes < 1:
        raise ExportError(f"passes must be at least 1, got {passes}", fix="pass passes=1 or more")
    calib_x = np.asarray(calib_x, np.float32)
    if len(calib_x) == 0:
        raise ExportError("calibration data is empty", where=os.fspath(int8_path),
                          fix="pass the calibration inputs the file was quantized with")
    model = onnx.load(os.fspath(int8_path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    with tempfile.TemporaryDirectory(prefix="edgetier-bias-") as d:
        tmp = Path(d)
        pre = _pre_processed(Path(fp32_path), tmp)
        fp_nodes = {n.name: n for n in pre.graph.node}
        layers = []  # (fp32 output, int8 output, int32 bias initializer, its scale)
        for node in model.graph.node:
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.name not in fp_nodes:
                continue
            dq = producer.get(node.input[2])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            if inits[dq.input[0]].data_type != onnx.TensorProto.INT32:
                continue
            layers.append((fp_nodes[node.name].output[0], node.output[0], dq.input[0], dq.input[1]))
        if not layers:
            raise ExportError("no Conv / Gemm with an int32 bias in the file", where=os.fspath(int8_path),
                              fix="pass a static int8 QDQ file written by export.quantize")
        reference = _channel_means(_with_outputs(pre, [f for f, *_ in layers]), tmp, [f for f, *_ in layers],
                                   calib_x, batch_size)
        left = []
        for _ in range(passes):  # one layer at a time, in graph order: each sees the corrected layers before it
            shifts = []
            for fp_out, q_out, bias_name, scale_name in layers:
                delta = _channel_means(_with_outputs(model, [q_out]), tmp, [q_out], calib_x, batch_size)[q_out] \
                    - reference[fp_out]
                spread = float(np.sqrt(np.mean(reference[fp_out] ** 2))) or 1.0
                shifts.append(float(np.mean(np.abs(delta))) / spread)
                bias = numpy_helper.to_array(inits[bias_name]).astype(np.int64)
                scale = numpy_helper.to_array(inits[scale_name]).astype(np.float64)
                fixed = np.clip(bias - np.round(delta / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max)
                inits[bias_name].CopyFrom(numpy_helper.from_array(fixed.astype(np.int32), bias_name))
            left.append(float(np.mean(shifts)))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, os.fspath(dst))
    return {"layers": len(layers), "passes": passes, "mean_shift_before_each_pass": left}
