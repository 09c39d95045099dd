"""The operator graph of an exported ONNX model, as the partition planner sees it.

Nodes are ONNX operators (what the runtime actually executes, after export fused BatchNorm into
Conv), plus one pinned node per graph input: the data is born on the end device. Each operator
carries its multiply-accumulates, weight bytes and output bytes at batch 1; each activation
tensor carries its element count, so the bytes that would cross a cut can be priced at the
dtype it travels in (fp32, fp16 or int8).

Shapes come from ONNX shape inference with the batch dimension fixed to 1 (a dynamic batch is
what the exporter writes; partitioning plans one request at a time, as Neurosurgeon does).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import onnx
from onnx import helper, numpy_helper, shape_inference

from compress.core.errors import EdgetierError

__all__ = ["OpGraph", "OpNode", "Tensor", "load_graph"]

INPUT_PREFIX = "input:"


@dataclass(frozen=True)
class Tensor:
    """One activation tensor: who makes it, who reads it, its batch-1 shape and element count."""

    name: str
    producer: str
    consumers: tuple[str, ...]
    shape: tuple[int, ...]
    elements: int
    itemsize: int  # bytes per element in the exported graph (4 for float32)
    floating: bool = True  # only float activations are compressed for the trip (int64 shapes travel as they are)

    @property
    def nbytes(self) -> int:
        return self.elements * self.itemsize


@dataclass(frozen=True)
class OpNode:
    """One operator (or a pinned graph input): its cost drivers at batch 1."""

    name: str
    op_type: str
    inputs: tuple[str, ...]  # activation tensors only (weights are counted in weight_bytes)
    outputs: tuple[str, ...]
    macs: int = 0
    weight_bytes: int = 0
    output_bytes: int = 0


@dataclass(frozen=True)
class OpGraph:
    """A DAG of operators in topological order, with the tensors between them."""

    nodes: tuple[OpNode, ...]
    tensors: dict[str, Tensor] = field(repr=False)
    inputs: tuple[str, ...]   # graph input tensor names
    outputs: tuple[str, ...]  # graph output tensor names
    source: str = ""

    @property
    def ops(self) -> tuple[OpNode, ...]:
        """The operators, without the pinned input nodes."""
        return tuple(n for n in self.nodes if not n.name.startswith(INPUT_PREFIX))

    def node(self, name: str) -> OpNode:
        return self._index[name]

    @cached_property
    def _index(self) -> dict[str, OpNode]:
        return {n.name: n for n in self.nodes}

    def edges(self) -> Iterator[tuple[str, str, str]]:
        """(producer, consumer, tensor) for every activation edge."""
        for t in self.tensors.values():
            for c in t.consumers:
                yield t.producer, c, t.name

    def predecessors(self) -> dict[str, set[str]]:
        preds: dict[str, set[str]] = {n.name: set() for n in self.nodes}
        for u, v, _ in self.edges():
            preds[v].add(u)
        return preds


def load_graph(path: str | os.PathLike[str]) -> OpGraph:
    """The operator graph of an ONNX file, shapes inferred at batch 1.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     g = load_graph(tiny_onnx(pathlib.Path(d) / "m.onnx"))
    >>> [(n.op_type, n.macs) for n in g.nodes]
    [('input', 0), ('Gemm', 12)]
    >>> g.tensors["input"].nbytes
    16
    """
    path = Path(path)
    try:
        model = onnx.load(os.fspath(path))
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError, Exception) as err:  # noqa: BLE001
        raise EdgetierError(f"cannot read the ONNX file ({str(err).splitlines()[0] if str(err) else err})",
                            where=str(path), fix="point at a model.onnx written by `edgetier run`") from None
    return graph_from_model(model, source=str(path))


def graph_from_model(model: onnx.ModelProto, *, source: str = "") -> OpGraph:
    """The operator graph of an in-memory ONNX model (see `load_graph`)."""
    model = _batch_one(model)
    inferred = shape_inference.infer_shapes(model, data_prop=True)  # data_prop: Shape->Reshape chains get sizes
    g = inferred.graph
    weights = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    infos = {vi.name: vi for vi in [*g.input, *g.value_info, *g.output]}
    graph_inputs = tuple(i.name for i in g.input if i.name not in weights)
    shapes = {name: _shape(vi) for name, vi in infos.items()}
    # Constant nodes are weights too: they never need to travel between tiers.
    const_outputs = {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producers: dict[str, str] = {name: INPUT_PREFIX + name for name in graph_inputs}
    names = _node_names(g)
    # Nodes that read no activation (Constant, Identity of a weight, ...) compute weights, not
    # activations: they belong to whichever segment reads them and never travel.
    for n, name in zip(g.node, names, strict=True):
        if not any(i in producers for i in n.input):
            const_outputs.update(o for o in n.output if o)
            continue
        for o in n.output:
            if o:
                producers[o] = name
    consumers: dict[str, list[str]] = {t: [] for t in producers}
    nodes: list[OpNode] = [OpNode(INPUT_PREFIX + i, "input", (), (i,)) for i in graph_inputs]
    for n, name in zip(g.node, names, strict=True):
        if not any(i in producers for i in n.input):
            continue
        acts = tuple(dict.fromkeys(i for i in n.input if i in producers))
        for i in acts:
            consumers[i].append(name)
        wbytes = sum(weights[i].nbytes for i in n.input if i in weights)
        wbytes += sum(_const_bytes(g, i, weights) for i in n.input if i in const_outputs)
        outs = tuple(o for o in n.output if o)
        nodes.append(OpNode(name, n.op_type, acts, outs, macs=_macs(n, shapes, weights),
                            weight_bytes=int(wbytes),
                            output_bytes=sum(_elements(shapes.get(o)) * _itemsize(infos.get(o)) for o in outs)))
    tensors = {t: Tensor(t, producers[t], tuple(consumers[t]), shapes.get(t) or (),
                         _elements(shapes.get(t)), _itemsize(infos.get(t)), _floating(infos.get(t)))
               for t in producers}
    outputs = tuple(o.name for o in g.output)
    missing = [t for t in (*graph_inputs, *outputs) if t not in shapes or shapes[t] is None]
    if missing:
        raise EdgetierError(f"ONNX shape inference could not size tensor(s) {', '.join(missing)}",
                            where=source or "onnx model", fix="export with static shapes apart from the batch")
    return OpGraph(tuple(nodes), tensors, graph_inputs, outputs, source)


def _batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name for i in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name in inits or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    # Stale intermediate shapes (with the symbolic batch) would stop inference from refining them.
    del model.graph.value_info[:]
    return model


def _node_names(g: onnx.GraphProto) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for k, n in enumerate(g.node):
        base = n.name or f"{n.op_type}_{k}"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return out


def _shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def _elements(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _itemsize(vi: onnx.ValueInfoProto | None) -> int:
    if vi is None or not vi.type.tensor_type.elem_type:
        return 4
    return helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).itemsize


def _floating(vi: onnx.ValueInfoProto | None) -> bool:
    if vi is None or not vi.type.tensor_type.elem_type:
        return True
    return helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).kind == "f"


def _const_bytes(g: onnx.GraphProto, name: str, weights: dict) -> int:
    for n in g.node:
        if name not in n.output:
            continue
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t).nbytes
        return sum(weights[i].nbytes for i in n.input if i in weights)  # e.g. Identity of a weight
    return 0


def _macs(n: onnx.NodeProto, shapes: dict[str, tuple[int, ...] | None], weights: dict) -> int:
    # Only the operators that dominate compute are counted; the rest cost memory traffic (roofline).
    out = shapes.get(n.output[0]) if n.output else None
    if out is None:
        return 0
    if n.op_type == "Conv" and len(n.input) > 1:
        w = weights[n.input[1]].shape if n.input[1] in weights else shapes.get(n.input[1])
        return _elements(out) * math.prod(w[1:]) if w else 0
    if n.op_type in ("Gemm", "MatMul"):
        a = shapes.get(n.input[0])
        if not a:
            return 0
        k = a[-1]
        if n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute):
            k = a[0]
        return _elements(out) * k
    return 0
