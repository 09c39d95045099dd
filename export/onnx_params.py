"""How many learned values an ONNX graph stores for its layers (`onnx_stats`' `params`).

A layer's weight reaches its Conv / Gemm / MatMul either straight from an initializer or through
a weight-building subgraph that does not depend on the model's input: a DequantizeLinear of an
int8 / INT4 / packed-int2 tensor (QDQ and QCDQ exports), a codebook gathered by packed cluster
codes, or a bucket vector gathered by hashed indices (weight sharing). The dense weights those
subgraphs build are folded by onnxruntime when the session starts; what the file stores — and
what was learned — is what this counts:

- a DequantizeLinear counts the elements of the weight it produces (one learned value each,
  however narrow or packed its storage); its scales and zero points are not parameters;
- a weight stored sparse (`export.sparse_store`: kept values scattered into a default-filled
  tensor) counts every entry of the tensor it rebuilds, as if stored dense — sparsity is reported
  separately, as PyTorch's nonzero count;
- any other float tensor of rank >= 1 in the subgraph counts its elements (plain weights and
  biases, cluster codebooks, hash buckets); integer tensors there are codes, indices and shapes,
  a sparsity-preserving codebook counts its pinned zero entry too (the exporter folds it into
  the codebook tensor, so the file stores it).

So a clustered layer counts its codebook, a hashed layer its buckets, like PyTorch's parameter
count of those models. Torch-free.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

__all__ = ["WEIGHT_OPS", "learned_params"]

# Ops whose non-activation inputs are learned weights or biases.
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"})
_SUB_BYTE = frozenset({"int4", "uint4", "int2", "uint2"})  # ml_dtypes types numpy sees as kind "V"


def learned_params(model: onnx.ModelProto) -> int:
    """Learned values stored for the graph's layers (see the module docstring).

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     learned_params(onnx.load(tiny_onnx(pathlib.Path(d) / "m.onnx")))
    15
    """
    graph = model.graph
    tensors: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = attr.t
    producer = {out: node for node in graph.node for out in node.output}
    shapes = _inferred_shapes(model)
    constant: dict[str, bool] = {}

    def is_constant(name: str) -> bool:  # input-independent: built from initializers only
        if name not in constant:
            node = producer.get(name)
            constant[name] = name == "" or name in tensors or (
                node is not None and node.op_type != "Constant" and all(is_constant(i) for i in node.input))
        return constant[name]

    counted: set[str] = set()
    total = 0

    def count(name: str) -> None:  # every learned value behind one weight input, once
        nonlocal total
        if name in counted or name == "" or not is_constant(name):
            return
        counted.add(name)
        if name in tensors:
            t = tensors[name]
            if _is_learned(t, dequantized=False):
                total += _numel(t)
            return
        node = producer[name]
        if node.op_type == "ScatterElements" and name in shapes:  # a weight stored sparse (export.sparse_store):
            total += shapes[name]  # one learned value per entry of the tensor it rebuilds, as when stored dense
            counted.update(node.input)
            return
        if node.op_type == "DequantizeLinear":
            data = node.input[0]
            if data in tensors:
                total += _numel(tensors[data]) if _is_learned(tensors[data], dequantized=True) else 0
            elif name in shapes:
                total += shapes[name]
            counted.add(data)
            return
        for source in node.input:
            count(source)

    weight_matmuls = set()
    for node in graph.node:
        if node.op_type in WEIGHT_OPS:
            for name in node.input:
                if is_constant(name):
                    count(name)
                    if node.op_type == "MatMul":
                        weight_matmuls.add(node.output[0])
    for node in graph.node:  # a Linear exported as MatMul + Add: the Add's constant input is its bias
        if node.op_type == "Add" and any(i in weight_matmuls for i in node.input):
            for name in node.input:
                count(name)
    return total


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, int]:
    """Element counts of the graph's values whose static shape ONNX shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # an op the inference does not know: DequantizeLinear outputs fall back to their data
        return {}
    counts = {}
    for info in inferred.graph.value_info:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            counts[info.name] = int(np.prod([d.dim_value for d in dims], dtype=np.int64))
    return counts


def _is_learned(t: onnx.TensorProto, *, dequantized: bool) -> bool:
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    if len(t.dims) < 1:
        return False
    return dtype.kind in "fiu" or dtype.name in _SUB_BYTE if dequantized else dtype.kind == "f"


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64))
