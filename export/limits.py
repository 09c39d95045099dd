"""A target's limits checked on the exported artifact: file bytes vs storage, peak activations vs RAM.

Peak activation memory is estimated from the graph at batch 1: walking the operators in their
stored order, a tensor is live from the operator that produces it (or from the start, for the
graph input) to the last operator that reads it (or to the end, for graph outputs); the peak is
the largest total of live tensor bytes at any operator. That is what a runtime's memory planner
needs at least; weights are not counted here (they are the file, checked against storage).
Torch-free, for .onnx and .tflite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import ExportError

__all__ = ["Limits", "LimitError", "check_limits", "peak_activation_bytes"]

KIB = 1024


class LimitError(ExportError):
    """An exported model that does not fit its target's storage or RAM budget."""


@dataclass(frozen=True)
class Limits:
    """What was measured against the budgets, in bytes."""

    model_bytes: int
    storage_bytes: int
    peak_activation_bytes: int
    ram_bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"model_bytes": self.model_bytes, "storage_bytes": self.storage_bytes,
                "peak_activation_bytes": self.peak_activation_bytes, "ram_bytes": self.ram_bytes}


def _peak(steps: list[tuple[list[str], list[str]]], sizes: dict[str, int], inputs: list[str],
          outputs: list[str]) -> int:
    last_use = {name: i for i, (ins, _) in enumerate(steps) for name in ins}
    last_use.update({name: len(steps) for name in outputs})  # outputs are read after the last operator
    live = {name for name in inputs if name in sizes}
    peak = sum(sizes[n] for n in live)
    for i, (_, outs) in enumerate(steps):
        live |= {n for n in outs if n in sizes}
        peak = max(peak, sum(sizes[n] for n in live))
        live = {n for n in live if last_use.get(n, -1) > i}
    return peak


def _tflite_steps(path: Path) -> tuple[list[tuple[list[str], list[str]]], dict[str, int], list[str], list[str]]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    graph = model.subgraphs[0]
    width = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sizes = {}
    for i, t in enumerate(graph.tensors or []):
        data = model.buffers[t.buffer].data if t.buffer else None
        if data is not None and len(data):
            continue  # a constant: part of the file, not of the activations
        dims = [max(int(d), 1) for d in (t.shape if t.shape is not None else [])]
        sizes[str(i)] = int(np.prod(dims, dtype=np.int64)) * _bytes_per(width.get(t.type, "FLOAT32"))
    steps = [([str(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0],
              [str(i) for i in (op.outputs if op.outputs is not None else [])]) for op in graph.operators or []]
    return steps, sizes, [str(i) for i in graph.inputs], [str(i) for i in graph.outputs]


def _onnx_steps(path: Path) -> tuple[list[tuple[list[str], list[str]]], dict[str, int], list[str], list[str]]:
    import onnx
    from onnx import helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(os.fspath(path)))
    graph = model.graph
    consts = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    sizes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.name in consts or not info.type.HasField("tensor_type"):
            continue
        tt = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize if tt.elem_type else 4
        sizes[info.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    steps = [(list(n.input), list(n.output)) for n in graph.node]
    return steps, sizes, [i.name for i in graph.input if i.name not in consts], [o.name for o in graph.output]


def _bytes_per(type_name: str) -> int:
    digits = "".join(c for c in type_name if c.isdigit())
    return max(int(digits) // 8, 1) if digits else 1


def peak_activation_bytes(path: str | os.PathLike[str]) -> int:
    """Estimated peak bytes of live activations at batch 1 (see the module docstring).

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:  # input [1, 4] + output [1, 3], float32
    ...     peak_activation_bytes(tiny_onnx(pathlib.Path(d) / "m.onnx"))
    28
    """
    path = Path(path)
    steps, sizes, inputs, outputs = _tflite_steps(path) if path.suffix == ".tflite" else _onnx_steps(path)
    return _peak(steps, sizes, inputs, outputs)


def check_limits(path: str | os.PathLike[str], *, storage_kb: int, ram_kb: int, target: str,
                 where: str | None = None) -> Limits:
    """Measure the file against `target`'s storage and RAM budgets; raise `LimitError` if it does not fit.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     check_limits(tiny_onnx(pathlib.Path(d) / "m.onnx"), storage_kb=1, ram_kb=1, target="t").ram_bytes
    1024
    """
    path = Path(path)
    limits = Limits(model_bytes=path.stat().st_size, storage_bytes=storage_kb * KIB,
                    peak_activation_bytes=peak_activation_bytes(path), ram_bytes=ram_kb * KIB)
    if limits.model_bytes > limits.storage_bytes:
        raise LimitError(
            f"the exported model is {limits.model_bytes / KIB:,.1f} KiB but target {target} has a storage budget "
            f"of {storage_kb:,} KiB ({limits.model_bytes / limits.storage_bytes:.2f}x over)",
            where=where or path.name,
            fix="compress this variant further (structured_prune with a higher ratio, ptq_int8 or qat for 4x fewer "
            "bytes, cluster) or choose a target with more storage; the stages before export are checkpointed, "
            "so rerun with --resume after changing the recipe",
        )
    if limits.peak_activation_bytes > limits.ram_bytes:
        raise LimitError(
            f"the exported model needs about {limits.peak_activation_bytes / KIB:,.1f} KiB of activations at batch 1 "
            f"(peak of live tensors, estimated from the graph) but target {target} has {ram_kb:,} KiB of RAM",
            where=where or path.name,
            fix="reduce the widest feature maps (structured_prune, a smaller width, an earlier stride) or quantize "
            "activations to int8 (ptq_int8), or choose a target with more RAM",
        )
    return limits
