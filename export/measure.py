"""Measurements of an exported artifact: latency in its runtime, accuracy, and what the file holds.

Every reported win is measured on the exported file (bytes on disk, runtime latency), never
on the PyTorch model it came from. Torch-free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from export import inputs
from export.errors import ExportError
from export.onnx_params import learned_params
from export.runtime import input_dtype, open_model

__all__ = ["Latency", "accuracy_of", "latency_ms", "model_stats", "onnx_stats", "tflite_stats"]


@dataclass(frozen=True)
class Latency:
    """Batch-1 latency in milliseconds over `repeats` timed runs with `threads` intra-op threads."""

    median_ms: float
    p90_ms: float
    threads: int
    repeats: int


def latency_ms(
    model_path: str | os.PathLike[str],
    x_one: np.ndarray,
    *,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 50,
) -> Latency:
    """Time `session.run` on one sample, after `warmup` untimed runs (allocations, caches).

    `model_path` is an .onnx (onnxruntime) or .tflite (LiteRT) file; a .tflite int8 model's time
    includes quantizing the input and dequantizing the output, as on a device.

    >>> import tempfile, pathlib, numpy as np
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     lat = latency_ms(tiny_onnx(pathlib.Path(d) / "m.onnx"), np.ones((1, 4)), repeats=5)
    >>> lat.median_ms > 0, lat.threads, lat.repeats
    (True, 1, 5)
    """
    if repeats < 1 or warmup < 0:
        raise ExportError(
            f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}", where=str(model_path)
        )
    if isinstance(x_one, Mapping) or (isinstance(x_one, np.ndarray) and x_one.dtype.names):
        return _latency_feed(model_path, x_one, threads=threads, warmup=warmup, repeats=repeats)
    x_one = np.asarray(x_one)
    if x_one.ndim < 1 or x_one.shape[0] != 1:
        raise ExportError(
            f"latency is measured at batch 1, got an input of shape {list(x_one.shape)}",
            where=str(model_path),
            fix="pass x[:1]",
        )
    session = open_model(model_path, threads=threads)
    spec = session.get_inputs()[0]
    return _timed(session, {spec.name: x_one.astype(input_dtype(session), copy=False)}, threads=threads,
                  warmup=warmup, repeats=repeats)


def _latency_feed(model_path: str | os.PathLike[str], x_one: Any, *, threads: int, warmup: int,
                  repeats: int) -> Latency:
    """`latency_ms` for several inputs (a dict of arrays or a record array, one row)."""
    session = open_model(model_path, threads=threads)
    entries = [{"name": i.name, "dtype": input_dtype(session, k).name, "shape": None}
               for k, i in enumerate(session.get_inputs())]
    feed = inputs.feed(entries, x_one, where=str(model_path))
    if inputs.batch_len(feed) != 1:
        raise ExportError(f"latency is measured at batch 1, got {inputs.batch_len(feed)} rows",
                          where=str(model_path), fix="pass one row")
    return _timed(session, feed, threads=threads, warmup=warmup, repeats=repeats)


def _timed(session: Any, feed: dict[str, np.ndarray], *, threads: int, warmup: int, repeats: int) -> Latency:
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times[i] = time.perf_counter() - start
    times *= 1e3
    return Latency(
        median_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        threads=threads,
        repeats=repeats,
    )


def accuracy_of(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose argmax logit equals the integer label.

    >>> accuracy_of(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 0, 0]))
    0.6666666666666666
    """
    logits, y = np.asarray(logits), np.asarray(y)
    if logits.ndim != 2 or y.shape != (len(logits),):
        raise ExportError(
            f"expected logits [N, classes] and labels [N], got {list(logits.shape)} and {list(y.shape)}",
            fix="pass the model's logits and one integer label per row",
        )
    return float(np.mean(logits.argmax(axis=1) == y)) if len(y) else float("nan")


def onnx_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size on disk, learned parameter count, and element count per initializer dtype.

    `params` counts the learned values stored for the layers (`export.onnx_params`): weights and
    biases, a quantized weight's elements (not its scales and zero points), and the codebooks or
    hash buckets of weight-shared layers whose dense weights the graph rebuilds. A model's folded
    BatchNorm shows up as (at most) a Conv bias, so `params` can be below PyTorch's count.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     s = onnx_stats(tiny_onnx(pathlib.Path(d) / "m.onnx"))
    >>> s["params"], s["precision_counts"]
    (15, {'float32': 15})
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError("ONNX file not found", where=str(path), fix="export the model first")
    model = onnx.load(os.fspath(path))
    tensors: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = attr.t
    counts: dict[str, int] = {}
    for t in tensors.values():
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).name
        counts[dtype] = counts.get(dtype, 0) + _numel(t)
    return {
        "bytes": path.stat().st_size,
        "params": learned_params(model),
        "precision_counts": dict(sorted(counts.items())),
    }


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64))


def compressed_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the model file after DEFLATE (zlib level 9): the storage a generic entropy coder gives.

    This is what zeros and repeated values are worth on disk or over the air when the file is
    shipped compressed (Deep Compression reports storage after encoding the same way); the
    runtime still loads the uncompressed file, so it says nothing about latency or RAM.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "zeros.bin"
    ...     _ = p.write_bytes(bytes(100_000))
    ...     compressed_bytes(p) < 1_000
    True
    """
    import zlib

    return len(zlib.compress(Path(path).read_bytes(), 9))


def tflite_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size on disk, parameter count, element count per constant dtype, and operators of a .tflite file.

    `params` counts the elements of constant tensors (those backed by a buffer) that feed a
    convolution or fully connected op as weights or bias; int32 shape constants are not parameters.
    Torch-free: read with the flatbuffer schema shipped in ai-edge-litert.
    """
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    if not path.is_file():
        raise ExportError(".tflite file not found", where=str(path), fix="export the model first")
    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    counts: dict[str, int] = {}
    params, ops = 0, []
    for graph in model.subgraphs or []:
        const = {i for i, t in enumerate(graph.tensors or [])
                 if t.buffer and model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)}
        for i in const:
            t = graph.tensors[i]
            kind = names.get(t.type, str(t.type)).lower()
            counts[kind] = counts.get(kind, 0) + int(np.prod(t.shape if t.shape is not None else [], dtype=np.int64))
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            ops.append(name)
            if name in _TFLITE_WEIGHT_OPS:
                params += sum(int(np.prod(graph.tensors[i].shape, dtype=np.int64))
                              for i in (op.inputs if op.inputs is not None else [])[1:] if i in const)
    return {"bytes": path.stat().st_size, "params": params, "precision_counts": dict(sorted(counts.items())),
            "operators": dict(sorted({o: ops.count(o) for o in set(ops)}.items()))}


_TFLITE_WEIGHT_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D",
                                "BATCH_MATMUL", "UNIDIRECTIONAL_SEQUENCE_LSTM"})


def model_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`onnx_stats` or `tflite_stats`, by the file's suffix.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model_stats(tiny_onnx(pathlib.Path(d) / "m.onnx"))["params"]
    15
    """
    return tflite_stats(path) if Path(path).suffix == ".tflite" else onnx_stats(path)
