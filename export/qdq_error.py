"""Where a QDQ int8 file's output error comes from: weight rounding, activation rounding, which tensor.

A static int8 ONNX file (`export.quantize`) is an fp32 graph with QuantizeLinear -> DequantizeLinear
pairs on activations and DequantizeLinear on int8 weights. Each can be undone on its own, and the
file re-run in onnxruntime:

- `unround_activations`: a pair becomes `Clip(x, lowest, highest)` on the same grid's range, so the
  tensor keeps its saturation (onnxruntime's quantizer drops a Relu / Clip (ReLU6) whose range the
  pair implements) but loses its rounding;
- `float_weights`: a weight's DequantizeLinear becomes the fp32 weight of the pre-processed graph
  (`quant_pre_process` of the fp32 file, BatchNorm folded, the names the quantizer used).

`error_split` measures the file, its weights alone (activations unrounded) and its activations
alone (weights fp32) against the fp32 file; `tensor_errors` undoes or keeps one tensor at a time.
Measured on EfficientNet-Lite0 (tests/benchmarks/test_ptq.py, 300 held-out views, MinMax,
2026-12-07, AVX-512 VNNI host): the int8 file's logits are 0.22 rms off fp32 (top-1 agreement 94.3 %),
weights alone 0.17 (92.7 %), activations alone 0.11 (97.0 %), saturation at the calibrated ranges
alone 0.02 (100 %); no single weight or activation tensor carries it
(each alone 0.02-0.03, the most: a depthwise conv's weights, 0.033).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.errors import ExportError
from export.runtime import make_session

__all__ = ["activation_pairs", "error_split", "float_weights", "tensor_errors", "unround_activations",
           "weight_dequantizers"]


def activation_pairs(model: onnx.ModelProto) -> tuple[str, ...]:
    """Names of the QuantizeLinear nodes on activations (their outputs feed DequantizeLinear nodes)."""
    return tuple(n.name for n in model.graph.node if n.op_type == "QuantizeLinear")


def weight_dequantizers(model: onnx.ModelProto, fp32_weights: dict[str, np.ndarray]) -> tuple[str, ...]:
    """Names of the DequantizeLinear nodes that read an int8 weight whose fp32 value is in `fp32_weights`."""
    inits = {i.name for i in model.graph.initializer}
    return tuple(n.name for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and _weight_name(n.input[0]) in fp32_weights)


def _weight_name(quantized: str) -> str:
    return quantized.removesuffix("_quantized")


def unround_activations(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` where the activation QuantizeLinear nodes `names` (and their DequantizeLinear
    nodes) become a Clip to the same representable range: saturation kept, rounding gone.

    >>> from onnx import TensorProto
    >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    >>> g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
    ...                        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")], "g", [x], [y],
    ...                       [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
    ...                        numpy_helper.from_array(np.array(0, np.uint8), "z")])
    >>> m = unround_activations(helper.make_model(g), ["q"])
    >>> from onnx.reference import ReferenceEvaluator
    >>> ReferenceEvaluator(m).run(None, {"x": np.array([-1.0, 0.123, 30.0], np.float32)})[0].tolist() == [0, 0.123, 25.5]
    False
    >>> ReferenceEvaluator(m).run(None, {"x": np.array([-1.0, 0.125, 30.0], np.float32)})[0].tolist()
    [0.0, 0.125, 25.5]
    """
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(names)
    quantizers = {n.name: n for n in graph.node if n.op_type == "QuantizeLinear" and n.name in wanted}
    missing = sorted(wanted - set(quantizers))
    if missing:
        raise ExportError(f"activation QuantizeLinear nodes not in the graph: {missing[:3]}",
                          fix="use names from export.qdq_error.activation_pairs(model)")
    rename: dict[str, str] = {}
    drop: set[str] = set()
    clips = []
    for q in quantizers.values():
        scale = float(numpy_helper.to_array(inits[q.input[1]]))
        zero = numpy_helper.to_array(inits[q.input[2]])
        info = np.iinfo(zero.dtype)
        low, high = (info.min - float(zero)) * scale, (info.max - float(zero)) * scale
        clipped = f"{q.name}_unrounded"
        graph.initializer.extend([numpy_helper.from_array(np.array(low, np.float32), clipped + "_low"),
                                  numpy_helper.from_array(np.array(high, np.float32), clipped + "_high")])
        clips.append(helper.make_node("Clip", [q.input[0], clipped + "_low", clipped + "_high"], [clipped],
                                      name=clipped))
        drop.add(q.name)
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] == q.output[0]:
                rename[node.output[0]] = clipped
                drop.add(node.name)
    outputs = {o.name for o in graph.output}
    nodes = [n for n in graph.node if n.name not in drop] + clips
    for old, new in list(rename.items()):
        if old in outputs:  # a quantized graph output (the logits): keep its name
            nodes.append(helper.make_node("Identity", [new], [old], name=f"{old}_identity"))
            del rename[old]
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(_topological(nodes, {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}))
    return _prune(model)


def float_weights(model: onnx.ModelProto, fp32_weights: dict[str, np.ndarray], names: Iterable[str]
                  ) -> onnx.ModelProto:
    """A copy of `model` where the weight DequantizeLinear nodes `names` give the fp32 weight instead."""
    model = copy.deepcopy(model)
    graph = model.graph
    wanted = set(names)
    keep = []
    for node in graph.node:
        if node.name in wanted:
            graph.initializer.append(numpy_helper.from_array(fp32_weights[_weight_name(node.input[0])],
                                                             node.output[0]))
            wanted.discard(node.name)
        else:
            keep.append(node)
    if wanted:
        raise ExportError(f"weight DequantizeLinear nodes not in the graph: {sorted(wanted)[:3]}",
                          fix="use names from export.qdq_error.weight_dequantizers(model, weights)")
    del graph.node[:]
    graph.node.extend(keep)
    return _prune(model)


def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _topological(nodes: list[onnx.NodeProto], ready: set[str]) -> list[onnx.NodeProto]:
    ready = set(ready)
    done: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise ExportError("the graph has a node whose inputs nothing produces", where=rest[0].name,
                              fix="pass a QDQ file written by export.quantize")
        for n in progress:
            done.append(n)
            ready.update(n.output)
        pending = rest
    return done


def _fp32_weights(fp32_path: Path) -> dict[str, np.ndarray]:
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgetier-qdq-error-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(fp32_path, pre)  # what export.quantize quantized: BatchNorm folded, same names
        model = onnx.load(os.fspath(pre))
    # weights only: the int32 biases stay (their grid, scale_input x scale_weight, is exact to ~1e-9), and a
    # Conv with an fp32 bias between activation Q/DQ pairs is fused by onnxruntime's optimizer into
    # something 7x further from fp32 (EfficientNet-Lite0: 0.79 rms vs 0.11 with the int32 bias kept)
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) > 1}


def _run(model: onnx.ModelProto | Path, x: np.ndarray, batch_size: int = 50) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="edgetier-qdq-error-") as tmp:
        path = Path(model) if isinstance(model, Path) else Path(tmp) / "m.onnx"
        if not isinstance(model, Path):
            onnx.save(model, os.fspath(path))
        session = make_session(path)
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0]
                               for i in range(0, len(x), batch_size)])


def _rms(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((out - ref) ** 2)))


def error_split(fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str], x: np.ndarray
                ) -> dict[str, float]:
    """Output error (rms against the fp32 file on `x`) of the int8 file, of its weights alone
    (activations unrounded), of its activations alone (weights fp32), and of neither
    (`clipping_only`: what is left is the saturation of each activation at its calibrated range; 0 on
    the calibration inputs themselves)."""
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    model = onnx.load(os.fspath(int8_path))
    weights = _fp32_weights(fp32_path)
    acts, wdq = activation_pairs(model), weight_dequantizers(model, weights)
    ref = _run(fp32_path, x)
    unrounded = unround_activations(model, acts)
    return {"int8": _rms(_run(int8_path, x), ref),
            "weights_only": _rms(_run(unrounded, x), ref),
            "activations_only": _rms(_run(float_weights(model, weights, wdq), x), ref),
            "clipping_only": _rms(_run(float_weights(unrounded, weights, wdq), x), ref),
            "activation_tensors": len(acts), "weight_tensors": len(wdq)}


def tensor_errors(fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str], x: np.ndarray
                  ) -> dict[str, float]:
    """Per quantized tensor (activation QuantizeLinear or weight DequantizeLinear node), the output error
    (rms against fp32 on `x`) when that tensor alone is rounded and everything else is fp32 / unrounded.
    One onnxruntime run of `x` per tensor: use a few dozen inputs."""
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    model = onnx.load(os.fspath(int8_path))
    weights = _fp32_weights(fp32_path)
    acts, wdq = activation_pairs(model), weight_dequantizers(model, weights)
    ref = _run(fp32_path, x)
    all_float = float_weights(unround_activations(model, acts), weights, wdq)
    errors = {}
    for name in acts:
        errors[name] = _rms(_run(float_weights(unround_activations(model, set(acts) - {name}), weights, wdq), x), ref)
    for name in wdq:
        errors[name] = _rms(_run(float_weights(unround_activations(model, acts), weights, set(wdq) - {name}), x), ref)
    errors["(clipping only)"] = _rms(_run(all_float, x), ref)
    return errors
