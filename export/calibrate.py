"""Activation ranges for static int8 ONNX quantization: MinMax, percentile, entropy (KL) or MSE.

onnxruntime's calibrators do the collection (they run the augmented graph on the calibration
inputs) and three of the four choices: MinMax, Percentile and Entropy. For MSE, its
`Distribution` calibrator collects a signed histogram per tensor and `mse_range` picks the
clipping range whose int8 grid has the least expected squared error on that histogram (clipping
error outside the range plus rounding error inside it). Whatever the method, the result is
written as onnxruntime's calibration cache (`calibration_cache_path`), so one calibration serves
any number of quantizations of the same graph (the accuracy-aware search re-quantizes with other
`nodes_to_exclude` many times).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator, save_tensors_data

__all__ = ["CALIBRATIONS", "calibrate", "chunk_rows", "mse_range"]

CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")

_ORT_METHOD = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy, "mse": CalibrationMethod.Distribution}
_MSE_BINS = 2048  # the Distribution calibrator wants >= 512; 2048 resolves ranges to ~0.05 % of the span


class BatchReader(CalibrationDataReader):
    """Feeds `calib_x` to a calibrator in fixed batches, in order, so ranges are reproducible."""

    def __init__(self, input_name: str, calib_x: np.ndarray, batch_size: int) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: calib_x[i : i + batch_size]} for i in range(0, len(calib_x), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def mse_range(hist: np.ndarray, edges: np.ndarray, *, levels: int = 256, steps: int = 40) -> tuple[float, float]:
    """The `[low, high]` (containing 0) whose `levels`-step uniform grid has the least expected squared error.

    The observed support (first to last non-empty bin, widened to contain 0) is shrunk towards 0
    from each end independently, in `steps` geometric steps per end (down to 1 %); a bin's mass counts with the
    squared distance from its centre to the range when it is outside (clipping), and with
    step^2 / 12 when inside (rounding). The observed support itself (MinMax) is a candidate, so
    the result is never worse than MinMax on the histogram.

    >>> edges = np.linspace(-10, 10, 2001)
    >>> centres = (edges[:-1] + edges[1:]) / 2
    >>> hist = np.exp(-centres ** 2 / 2)          # a unit Gaussian ...
    >>> hist[-1] = hist[0] = 1e-6                 # ... with two lone outliers at +-10
    >>> low, high = mse_range(hist, edges)
    >>> bool(2 < high < 6 and -6 < low < -2)      # clipped far inside the outliers
    True
    >>> mse_range(np.ones(10), np.linspace(0, 6, 11))[0]   # a one-sided (ReLU) tensor stays one-sided
    0.0
    """
    hist = np.asarray(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    used = np.flatnonzero(hist > 0)
    if len(used) == 0:
        return 0.0, 0.0
    lo, hi = min(float(edges[used[0]]), 0.0), max(float(edges[used[-1] + 1]), 0.0)
    fractions = np.geomspace(1.0, 0.01, steps)  # geometric: heavy tails need fine steps near small ranges
    lows, highs = np.meshgrid(lo * fractions, hi * fractions, indexing="ij")
    a, b = lows.reshape(-1, 1), highs.reshape(-1, 1)
    step = (b - a) / (levels - 1)
    outside = np.clip(centres, a, b) - centres
    err = np.sum(hist * np.where(outside != 0, outside**2, step**2 / 12), axis=1)
    best = int(np.argmin(err))  # index 0 (the full support) wins ties: shrink only for a real gain
    return float(a[best, 0]), float(b[best, 0])


def _even_batch(n: int, batch_size: int) -> int:
    """The largest batch size <= `batch_size` that divides `n`: onnxruntime's histogram calibrators stack the
    per-batch outputs with `np.asarray`, which fails on a shorter last batch (130 inputs in batches of 64).

    >>> _even_batch(130, 64), _even_batch(128, 64), _even_batch(7, 64)
    (26, 64, 7)
    """
    return next(b for b in range(min(batch_size, n), 0, -1) if n % b == 0)


def chunk_rows(session, input_name: str, calib_x: np.ndarray, batch_size: int, memory_budget: float) -> int:
    """Rows per `collect_data` call: a whole number of batches whose calibrated tensors (measured on
    one row through the calibrator's augmented `session`) fit in `memory_budget` bytes; at least one
    batch, at most all rows."""
    if len(calib_x) <= batch_size:
        return len(calib_x)
    per_row = sum(np.asarray(o).nbytes for o in session.run(None, {input_name: calib_x[:1]}))
    batches = max(1, int(memory_budget // max(per_row * batch_size, 1)))
    return min(len(calib_x), batches * batch_size)


def calibrate(
    model_path: str | os.PathLike[str],
    input_name: str,
    calib_x: np.ndarray,
    cache_path: str | os.PathLike[str],
    *,
    method: str = "minmax",
    percentile: float = 99.999,
    batch_size: int = 64,
    memory_budget: float = 2e9,
) -> Path:
    """Compute activation ranges of the (pre-processed) ONNX file with `method`; write them to `cache_path`.

    onnxruntime's calibrators keep every calibrated tensor of every input they are given before
    reducing them to ranges / histograms, so the inputs are fed in chunks of at most
    `memory_budget` bytes of such tensors (`chunk_rows`), each merged into the ranges so far:
    memory no longer grows with the number of calibration inputs (400 views of a 224 x 224
    EfficientNet-Lite0 took 20 GB in one piece and were killed). MinMax ranges are exactly those of
    one piece; a histogram's bin width is set by the first chunk (later chunks widen it by whole
    bins), so chunked percentile / entropy / MSE ranges match one piece's to the bin resolution.

    The cache is onnxruntime's JSON format, marked as MinMax ranges (that is what they are once
    computed): pass it to `quantize_static(..., calibrate_method=CalibrationMethod.MinMax,
    calibration_cache_path=...)`.

    >>> import tempfile, pathlib, json
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     src = tiny_onnx(pathlib.Path(d) / "m.onnx")
    ...     c = calibrate(src, "input", np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32),
    ...                   pathlib.Path(d) / "ranges.json", method="mse")
    ...     "input" in json.loads(c.read_text())["data"]
    True
    """
    if method not in _ORT_METHOD:
        raise ValueError(f"unknown calibration {method!r}; choose one of {', '.join(CALIBRATIONS)}")
    extra: dict[str, object] = {}
    if method == "percentile":
        extra = {"percentile": percentile, "symmetric": False}
    elif method == "mse":
        extra = {"num_bins": _MSE_BINS}
    elif method == "entropy":
        # onnxruntime's defaults (128 bins, 128 quantized bins) leave the KL search one candidate, the full
        # range, i.e. MinMax; TensorRT's 2048 bins searched in steps of the int8 grid make it a real search
        extra = {"num_bins": _MSE_BINS, "num_quantized_bins": 128}
    calib_x = np.asarray(calib_x, np.float32)
    if method != "minmax":
        batch_size = _even_batch(len(calib_x), batch_size)
    with tempfile.TemporaryDirectory(prefix="edgetier-calib-") as tmp:
        calibrator = create_calibrator(Path(model_path), None, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=_ORT_METHOD[method], extra_options=extra)
        rows = chunk_rows(calibrator.infer_session, input_name, calib_x, batch_size, memory_budget)
        # onnxruntime's histogram calibrators print progress on stdout: keep the CLI's output clean
        with contextlib.redirect_stdout(io.StringIO()):
            for start in range(0, len(calib_x), rows):  # each call merges into the ranges / histograms so far
                calibrator.collect_data(BatchReader(input_name, calib_x[start:start + rows], batch_size))
            ranges = calibrator.compute_data()
        del calibrator  # holds an InferenceSession on the temporary augmented model
    data = {}
    for name, td in ranges.data.items():
        low, high = (mse_range(td.hist, td.hist_edges) if method == "mse" else
                     (float(np.asarray(td.range_value[0]).min()), float(np.asarray(td.range_value[1]).max())))
        data[name] = TensorData(lowest=np.float32(low), highest=np.float32(high))
    cache_path = Path(cache_path)
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache_path)
    return cache_path
