"""A LiteRT (.tflite) model behind the two session calls the bundle runtime uses: `run` and `get_inputs`.

Torch-free (numpy + ai-edge-litert only), so `export.runtime` runs .onnx and .tflite bundles
with the same code. What the adapter adds over the bare interpreter:

- int8 inputs/outputs: a static int8 model takes int8 tensors; float inputs are quantized with
  the input tensor's scale and zero point, outputs dequantized with the output's, so callers
  always see float32 in and out, as with onnxruntime;
- batches: the graph has a fixed batch size (1, see `export.tflite`); larger inputs are run in
  chunks of that size, so `run` takes any number of rows;
- outputs come in the signature's order (`output_0`, `output_1`, ...), which is the PyTorch
  model's output order.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.errors import BundleError

__all__ = ["TFLiteSession"]


@dataclass(frozen=True)
class _Input:
    """Mimics `onnxruntime.NodeArg` (name, shape, type) for the code that inspects session inputs."""

    name: str
    shape: list[int]
    type: str = "tensor(float)"


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null for the block.

    LiteRT's C++ logger writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to
    fd 2 when an interpreter is created, whatever TF_CPP_MIN_LOG_LEVEL says; Python's sys.stderr
    cannot catch it. Errors still reach the user: the interpreter raises them as Python exceptions.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class TFLiteSession:
    """An ai-edge-litert Interpreter with onnxruntime's `run(output_names, feed)` calling convention.

    Usage (exercised in tests/export/test_tflite.py, since making a .tflite takes a conversion):
    `TFLiteSession("model.tflite", threads=1).run(None, {"input": x})[0]` -> float32 logits `[len(x), classes]`.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter  # only a LiteRT device needs it

        try:
            with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self._interp = Interpreter(model_path=os.fspath(path), num_threads=threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BundleError(f"LiteRT cannot open the model ({str(err).splitlines()[0]})", where=os.fspath(path),
                              fix="re-export the bundle; the file is not a .tflite model this LiteRT can run") from None
        runner = self._interp.get_signature_runner()
        ins, outs = runner.get_input_details(), runner.get_output_details()
        if len(ins) != 1:
            raise BundleError(f"the model has {len(ins)} inputs; bundles carry one-input models",
                              where=os.fspath(path), fix="export a model with a single input tensor")
        (self._in,) = ins.values()
        self._outs = [outs[name] for name in sorted(outs, key=_position)]
        self.input_name = next(iter(ins))
        self.batch = int(self._in["shape"][0])

    def get_inputs(self) -> list[_Input]:
        return [_Input(self.input_name, [int(d) for d in self._in["shape"]])]

    @property
    def input_quantization(self) -> tuple[float, int]:
        """(scale, zero point) of the input tensor; (0.0, 0) for a float input."""
        return tuple(self._in["quantization"])  # type: ignore[return-value]

    @property
    def precision(self) -> str:
        """`int8` when the model takes int8 tensors, else `fp32`."""
        return "int8" if np.dtype(self._in["dtype"]) == np.int8 else "fp32"

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Float32 outputs for all rows of the single input in `feed` (its key is not checked).

        Output names differ between formats (`logits` / `output_0`), so `output_names` only says how
        many outputs to return, in the model's order.
        """
        (x,) = feed.values()
        x = np.asarray(x, dtype=np.float32)
        shape = [int(d) for d in self._in["shape"][1:]]
        if list(x.shape[1:]) != shape:
            raise BundleError(f"input rows of shape {list(x.shape[1:])} do not fit the model's {shape}",
                              fix="reshape the input to the shape in manifest.json 'input.shape'")
        chunks: list[list[np.ndarray]] = [[] for _ in self._outs]
        for start in range(0, len(x) - len(x) % self.batch, self.batch):
            for k, out in enumerate(self._invoke(x[start:start + self.batch])):
                chunks[k].append(out)
        if len(x) % self.batch:  # a last partial chunk: pad with zeros, keep the real rows
            rest = len(x) % self.batch
            padded = np.concatenate([x[len(x) - rest:], np.zeros((self.batch - rest, *shape), np.float32)])
            for k, out in enumerate(self._invoke(padded)):
                chunks[k].append(out[:rest])
        results = [np.concatenate(c) if c else np.zeros((0, *[int(d) for d in o["shape"][1:]]), np.float32)
                   for c, o in zip(chunks, self._outs, strict=True)]
        return results[:len(output_names)] if output_names else results

    def _invoke(self, x: np.ndarray) -> list[np.ndarray]:
        self._interp.set_tensor(self._in["index"], _quantize(x, self._in))
        self._interp.invoke()
        return [_dequantize(self._interp.get_tensor(o["index"]), o) for o in self._outs]


def _position(name: str) -> tuple[int, str]:
    # litert-torch names outputs output_0, output_1, ...: sort by number, not text (output_10 > output_2).
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind not in "iu" or not scale:
        return x.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]).kind not in "iu" or not scale:
        return np.array(y, dtype=np.float32)  # a copy: the interpreter reuses its output buffer
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
