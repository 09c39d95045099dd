"""Tiny artifacts for the docstring examples, built with `onnx.helper` (no torch, no training).

Private: it exists so each public example stays one or two lines and runs in milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.bundle import write_bundle


def tiny_model() -> onnx.ModelProto:
    """A 4 → 3 Gemm: input `input` [N, 4] float32, output `logits` [N, 3].

    >>> [i.name for i in tiny_model().graph.initializer]
    ['W', 'b']
    """
    weight = np.tile(np.array([[0.1, 0.0, -0.1]], dtype=np.float32), (4, 1))
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def tiny_onnx(path: str | os.PathLike[str]) -> Path:
    """Write `tiny_model()` to `path` and return it.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     tiny_onnx(pathlib.Path(d) / "m.onnx").stat().st_size > 0
    True
    """
    onnx.save(tiny_model(), os.fspath(path))
    return Path(path)


def tiny_bundle(out_dir: str | os.PathLike[str]) -> Path:
    """Write a complete fp32 bundle around `tiny_model()` (labels a, b, c).

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     (tiny_bundle(pathlib.Path(d) / "b") / "model.onnx").is_file()
    True
    """
    manifest = {
        "model": {"file": "model.onnx", "format": "onnx", "precision": "fp32"},
        "input": {"name": "input", "shape": [None, 4], "dtype": "float32"},
        "output": {"name": "logits"},
        "labels": ["a", "b", "c"],
    }
    return write_bundle(
        out_dir,
        files={"model.onnx": tiny_model().SerializeToString()},
        manifest=manifest,
        report={"models": []},
        report_md="# tiny\n",
    )
