"""Store the sparse weights of an ONNX file sparse, in a form onnxruntime rebuilds when it loads.

An unstructured-pruned layer is mostly zeros, and ONNX stores it dense: a 90 %-sparse model is as
big on disk as the dense one (only a generic compressor such as DEFLATE sees the zeros). ONNX's
own `sparse_initializer` needs int64 indices — 8 bytes per kept weight, more than the fp32 value
it locates — so it pays only beyond ~67 % sparsity, and not at all for int8 weights.

`store_sparse` keeps each such initializer as two tensors:

- `values`: the kept entries in storage order (the tensor's own dtype: fp32, or the int8 / uint8
  codes of a quantized weight);
- `gaps`: one UINT8 per kept entry, its distance from the previous one (the first from index 0).
  A run of more than 255 default entries gets a filler entry every 255 positions that writes the
  default value again, so any spacing encodes.

and a five-node subgraph builds the dense tensor back under its original name:
`Cast(gaps) → CumSum → ScatterElements(ConstantOfShape(default), positions, values) → Reshape`.
The subgraph reads only initializers, so onnxruntime's constant folding (graph optimization level
basic and above, which every session here uses) runs it once when the session is created: the
kernels then see the same dense initializer as before, and latency is unchanged. The "default"
is the tensor's most frequent value — 0 for a pruned float or signed int8 weight, 128 for the
uint8-shifted int8 weights of a QCDQ file — so the encoding stores exactly what differs from it.

Cost per kept entry: its value plus one byte, and ~200 bytes of graph per tensor; a tensor is
re-encoded only when that saves at least `min_saving` of its bytes (and `min_bytes` bytes).
Native INT4 and packed int2 initializers are left alone (ScatterElements has no 4-bit form).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["SparseStored", "store_sparse", "store_sparse_file"]

_ENCODABLE = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.UINT8}
_MAX_GAP = 255  # one uint8 per kept entry
_GRAPH_BYTES = 200  # the five nodes, three small constants and their names, per re-encoded tensor


@dataclass(frozen=True)
class SparseStored:
    """What `store_sparse` re-encoded: how many tensors, their bytes before and after."""

    tensors: int = 0
    dense_bytes: int = 0
    stored_bytes: int = 0
    kept: int = 0  # entries that differ from their tensor's default value
    elements: int = 0  # all entries of the re-encoded tensors

    def note(self) -> str:
        """One line for the report."""
        return (f"{self.tensors} sparse weight tensors stored as kept values + 1-byte gaps "
                f"({self.kept:,} of {self.elements:,} entries, {self.dense_bytes:,} -> {self.stored_bytes:,} B); "
                "onnxruntime rebuilds them dense when the session starts (constant folding), so latency is unchanged")


def encode(flat: np.ndarray, default: object) -> tuple[np.ndarray, np.ndarray]:
    """(values, uint8 gaps) of the entries of `flat` that differ from `default`, with fillers for long runs.

    >>> values, gaps = encode(np.array([0, 5, 0, 0, 7], np.int8), 0)
    >>> values.tolist(), gaps.tolist()
    ([5, 7], [1, 3])
    >>> values, gaps = encode(np.r_[np.zeros(600, np.float32), 1.0], 0)  # fillers every 255 positions
    >>> values.tolist(), gaps.tolist()
    ([0.0, 0.0, 1.0], [255, 255, 90])
    """
    positions = np.flatnonzero(flat != default)
    if positions.size == 0:  # keep one entry so the tensors are never empty
        positions = np.array([0])
    gaps = np.diff(positions, prepend=0)
    fillers = np.maximum((gaps - 1) // _MAX_GAP, 0)  # extra entries a long gap needs (gap 0 only at index 0)
    if fillers.any():
        segments = []
        previous = 0
        for position, count in zip(positions.tolist(), fillers.tolist(), strict=True):
            segments.extend(range(previous + _MAX_GAP, previous + _MAX_GAP * count + 1, _MAX_GAP))
            segments.append(position)
            previous = position
        positions = np.asarray(segments, dtype=np.int64)
        gaps = np.diff(positions, prepend=0)
    return flat[positions], gaps.astype(np.uint8)


def store_sparse(model: onnx.ModelProto, *, min_saving: float = 0.2, min_bytes: int = 1024) -> SparseStored:
    """Re-encode, in place, every initializer of `model` that the sparse form makes smaller.

    >>> w = np.zeros((64, 64), np.float32); w[::8, ::4] = 1.5  # 97 % zeros; 7 runs of 452 zeros need a filler each
    >>> g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [numpy_helper.from_array(w, "W")])
    >>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    >>> stored = store_sparse(m)
    >>> stored.tensors, stored.kept, stored.dense_bytes, stored.stored_bytes
    (1, 128, 16384, 675)
    >>> import onnx.reference
    >>> bool((onnx.reference.ReferenceEvaluator(m).run(None, {"x": np.ones((1, 64), np.float32)})[0]
    ...       == np.ones((1, 64), np.float32) @ w).all())
    True
    """
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | graph_inputs
    kept_inits, nodes = [], []
    tensors = dense_bytes = stored_bytes = kept = elements = 0
    for init in graph.initializer:
        plan = _plan(init, graph_inputs, min_saving=min_saving, min_bytes=min_bytes)
        if plan is None:
            kept_inits.append(init)
            continue
        array, default, values, gaps = plan
        new, built = _rebuild(init.name, array, default, values, gaps, taken)
        kept_inits += new
        nodes += built
        tensors += 1
        dense_bytes += array.nbytes
        stored_bytes += values.nbytes + gaps.nbytes
        kept += int((array.ravel() != default).sum())
        elements += array.size
    if tensors:
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + rest)  # the builders read initializers only: first keeps the graph sorted
        _require_opset(model, 11)  # CumSum, ScatterElements
    return SparseStored(tensors, dense_bytes, stored_bytes, kept, elements)


def store_sparse_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: float) -> SparseStored:
    """`store_sparse` on a file; `dst` is written only when something was re-encoded."""
    model = onnx.load(os.fspath(src))
    stored = store_sparse(model, **kwargs)  # type: ignore[arg-type]
    if stored.tensors:
        onnx.save(model, os.fspath(Path(dst)))
    return stored


def _plan(init: TensorProto, graph_inputs: set[str], *, min_saving: float, min_bytes: int
          ) -> tuple[np.ndarray, object, np.ndarray, np.ndarray] | None:
    if init.data_type not in _ENCODABLE or init.name in graph_inputs or len(init.dims) == 0:
        return None
    size = int(np.prod(init.dims, dtype=np.int64))
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    if size * itemsize < min_bytes:
        return None
    array = numpy_helper.to_array(init)
    flat = array.ravel()
    uniques, counts = np.unique(flat, return_counts=True)
    if counts.max() * (itemsize + 1) < size * min_saving:  # cannot save enough even with no fillers
        return None
    default = uniques[counts.argmax()]
    if isinstance(default, np.floating) and np.isnan(default):
        return None
    values, gaps = encode(flat, default)
    saving = array.nbytes - (values.nbytes + gaps.nbytes + _GRAPH_BYTES)
    if saving < max(min_bytes, min_saving * array.nbytes):
        return None
    return array, default, values, gaps


def _rebuild(name: str, array: np.ndarray, default: object, values: np.ndarray, gaps: np.ndarray,
             taken: set[str]) -> tuple[list[TensorProto], list[onnx.NodeProto]]:
    def fresh(suffix: str) -> str:
        candidate, i = f"{name}.{suffix}", 1
        while candidate in taken:
            candidate, i = f"{name}.{suffix}{i}", i + 1
        taken.add(candidate)
        return candidate

    v, g, n, axis, shape = fresh("v"), fresh("g"), fresh("n"), fresh("ax"), fresh("shape")
    pos, base, flat = fresh("pos"), fresh("base"), fresh("flat")
    g64 = fresh("g64")
    inits = [numpy_helper.from_array(values, v), numpy_helper.from_array(gaps, g),
             numpy_helper.from_array(np.array([array.size], np.int64), n),
             numpy_helper.from_array(np.array(0, np.int64), axis),
             numpy_helper.from_array(np.array(array.shape, np.int64), shape)]
    fill = numpy_helper.from_array(np.array([default], dtype=array.dtype))
    nodes = [helper.make_node("Cast", [g], [g64], to=TensorProto.INT64),
             helper.make_node("CumSum", [g64, axis], [pos]),
             helper.make_node("ConstantOfShape", [n], [base], value=fill),
             helper.make_node("ScatterElements", [base, pos, v], [flat], axis=0),
             helper.make_node("Reshape", [flat, shape], [name])]
    return inits, nodes


def _require_opset(model: onnx.ModelProto, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version  # pragma: no cover - every exporter here writes opset >= 13
