"""Export a brevitas-quantized model as a QCDQ ONNX graph whose weights are really low-bit on disk.

brevitas' `export_onnx_qcdq` writes every quantized weight as an int8 tensor followed by a
`Clip` to its bit width and a `DequantizeLinear`: a 4-bit model is as big on disk as an 8-bit
one (brevitas issue #1346). `pack_weights` rewrites each such chain so that the weight is stored
in the narrowest form that holds its clip range and feeds `DequantizeLinear` directly:

- ≤ 2 bits (`int2`): four weights per byte in a UINT8 initializer, unpacked by a constant
  subgraph (`BitShift`, `BitwiseAnd`, `Reshape`, `Slice`) that onnxruntime folds when it loads
  the model. onnxruntime 1.32 runs `DequantizeLinear` on native INT2 tensors (opset 25), but its
  QDQ fusion then builds a `QGemm` / `QLinearConv` that rejects them ("Type 'tensor(int2)' ... is
  invalid"), so native INT2 fails on any layer with quantized input and output;
- ≤ 4 bits (`int4`): a native INT4 initializer (two weights per byte; opset 21), which
  onnxruntime 1.32 runs on the CPU, fused or not, per tensor and per channel;
- ≤ 8 bits (`int8`): one byte per weight, stored as UINT8 with the zero point shifted by 128
  (the same dequantized values). Signed int8 weights meet uint8 activations (after a ReLU) in
  onnxruntime's x86 U8S8 kernels, whose 16-bit intermediate sums (VPMADDUBSW without VNNI) saturate:
  measured on an AVX2 machine, up to 48 output steps off; the U8U8 kernels do not saturate.

BatchNorm stays a `BatchNormalization` node (four float vectors per layer). Folding it into the
per-channel weight scale and a Conv bias would keep the integers and save those bytes, but
onnxruntime then quantizes that float bias to int32 inside its QDQ fusion, and the rounding moved
2 % of the outputs by up to 3 steps (measured): exact parity is worth more than ~10 KiB.

The graph's opset is raised to the one these need (21 with INT4, 18 with packed int2) with
`onnx.version_converter`, before packing, so every other operator is rewritten to its form at
that opset (ReduceMean's `axes` became an input at 18, Pad gained `axes` at 18, ...): relabelling
the opset alone left `x.mean((2, 3))` as an invalid ReduceMean. Tensor names are shortened in
control-flow subgraphs too (`If` nodes, e.g. `squeeze(0)` on a dynamic batch). The TorchScript exporter is used (`dynamo=False`): brevitas'
integer-weight export reads `data_ptr()`, which the dynamo exporter's fake tensors do not have.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.onnx import eval_mode
from export.qcdq_fold import fold_batchnorm

__all__ = ["Packed", "QCDQExport", "export_qcdq", "pack_weights", "storage_type"]

# (name, lowest value, highest value) of each storage, narrowest first
_RANGES = (("int2", -2, 1), ("int4", -8, 7), ("int8", -128, 127))
_OPSET_NEEDED = {"int2": 18, "int4": 21, "int8": 13}  # BitwiseAnd: 18; INT4 DequantizeLinear: 21
_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_BASE_OPSET = 17


class Packed(NamedTuple):
    """How one weight is stored (`int2`, `int4`, `int8`) and how many elements it has."""

    kind: str
    params: int


@dataclass(frozen=True)
class QCDQExport:
    """What `export_qcdq` wrote.

    - `weights`: how each quantized weight is stored, by the name of the tensor that feeds its
      `DequantizeLinear` (`<layer>.weight`);
    - `float_weights`: weights of layers left unquantized (stored as float);
    - `params`: elements of the quantized and float weights;
    - `precision`: what the file stores, e.g. `int8`, `int4/int8 mixed`, `int8 + fp32`;
    - `output_step`: the scale of the `DequantizeLinear` that produces the graph's output, i.e.
      one output quantization step, or None when the output is not quantized.
    """

    path: Path
    weights: dict[str, Packed]
    float_weights: tuple[str, ...]
    params: int
    precision: str
    output_step: float | None
    opset: int


def storage_type(low: int, high: int) -> str:
    """The narrowest storage (`int2`, `int4`, `int8`) holding every integer in [low, high].

    >>> storage_type(-1, 1), storage_type(-7, 7), storage_type(-8, 7), storage_type(-127, 127)
    ('int2', 'int4', 'int4', 'int8')
    """
    for name, lo, hi in _RANGES:
        if lo <= low and high <= hi:
            return name
    raise ExportError(f"integer range [{low}, {high}] does not fit in int8", fix="quantize weights to 8 bits or fewer")


def export_qcdq(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    input_name: str = "input",
    output_name: str = "logits",
    dynamic_batch: bool = True,
) -> QCDQExport:
    """Export the brevitas model `model` (in eval mode) to a QCDQ ONNX file at `path`, weights packed.

    >>> import tempfile, pathlib, torch
    >>> from brevitas.nn import QuantLinear
    >>> layer = QuantLinear(8, 2, bias=False, weight_bit_width=4)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = export_qcdq(layer, (torch.zeros(1, 8),), pathlib.Path(d) / "m.onnx")
    >>> out.precision, out.params, out.opset
    ('int4', 16, 21)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in (input_name, output_name)} if dynamic_batch else None
    with tempfile.TemporaryDirectory(prefix="edgetier-qcdq-") as tmp, eval_mode(model), warnings.catch_warnings():
        # The legacy-exporter deprecation is expected: dynamo=False is required (module docstring).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        from brevitas.export import export_onnx_qcdq  # heavy import, only when exporting

        raw = Path(tmp) / "raw.onnx"
        try:
            export_onnx_qcdq(model, args=tuple(example_inputs), export_path=os.fspath(raw), dynamo=False,
                             opset_version=_BASE_OPSET, input_names=[input_name], output_names=[output_name],
                             dynamic_axes=axes)
        except (RuntimeError, AssertionError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"brevitas could not export the model as QCDQ ({first})",
                              where=str(path), fix="quantize weights to 2-8 bits per tensor or per channel") from err
        proto, weights = pack_weights(onnx.load(os.fspath(raw)))
    fold_batchnorm(proto)  # BN after a per-channel quantized conv: into its scales and a bias (exact)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(path))
    float_weights = _float_weights(proto)
    tensors = {t.name: t for t in proto.graph.initializer}
    params = sum(p.params for p in weights.values())
    params += sum(int(np.prod(tensors[n].dims, dtype=np.int64)) for n in float_weights)
    return QCDQExport(path=path, weights=weights, float_weights=float_weights, params=params,
                      precision=_precision(weights, float_weights), output_step=_output_step(proto),
                      opset=_opset(proto))


def pack_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Packed]]:
    """Store every int8 weight feeding a `DequantizeLinear` (through a `Clip` or not) in its narrowest form.

    Returns the rewritten model (opset raised as needed, unused initializers and nodes removed,
    initializers no longer listed as graph inputs) and the storage of each packed weight.

    >>> from onnx import helper, numpy_helper
    >>> w = numpy_helper.from_array(np.array([[-7, 0, 7, 3]], np.int8), "w")
    >>> consts = [numpy_helper.from_array(np.array(v, np.int8), n) for n, v in (("lo", -7), ("hi", 7), ("zp", 0))]
    >>> scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    >>> g = helper.make_graph([helper.make_node("Clip", ["w", "lo", "hi"], ["c"]),
    ...                        helper.make_node("DequantizeLinear", ["c", "s", "zp"], ["y"])], "g", [],
    ...                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, scale, *consts])
    >>> packed, stored = pack_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    >>> stored, [n.op_type for n in packed.graph.node], packed.opset_import[0].version
    ({'w.weight': Packed(kind='int4', params=4)}, ['DequantizeLinear'], 21)
    """
    opset = _needed_opset(model)
    model = _convert(model, opset) if opset > _opset(model) else _copy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    stored: dict[str, Packed] = {}
    new_inits: list[TensorProto] = []
    new_nodes: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    for node in graph.node:
        found = _int8_weight(node, inits, producers)
        if found is None:
            continue
        weight, zero_point, low, high = found
        values = numpy_helper.to_array(weight).astype(np.int16)
        if values.size and (values.min() < low or values.max() > high):
            raise ExportError(f"weight {weight.name!r} has values outside its clip range [{low}, {high}]",
                              fix="re-export: the integer weights and the Clip disagree")
        kind = storage_type(low, high)
        name = _unique(f"{_layer_name(node.name) or weight.name}.weight", inits, new_inits)
        zp = numpy_helper.to_array(zero_point).astype(np.int16)
        if kind == "int4":
            int4 = helper.tensor_dtype_to_np_dtype(TensorProto.INT4)
            new_inits += [numpy_helper.from_array(values.astype(int4), name),
                          numpy_helper.from_array(zp.astype(int4), f"{name}.zero_point")]
            node.input[0] = name
        elif kind == "int8":
            new_inits += [numpy_helper.from_array((values + 128).astype(np.uint8), name),
                          numpy_helper.from_array((zp + 128).astype(np.uint8), f"{name}.zero_point")]
            node.input[0] = name
        else:
            inits_2, nodes_2 = _packed_int2(values + 2, name)
            new_inits += [*inits_2, numpy_helper.from_array((zp + 2).astype(np.uint8), f"{name}.zero_point")]
            new_nodes.append((node, nodes_2))
            node.input[0] = nodes_2[-1].output[0]
        node.input[2] = f"{name}.zero_point"
        stored[name] = Packed(kind, int(values.size))
    graph.initializer.extend(new_inits)
    for consumer, nodes in new_nodes:  # the unpacking nodes go right before the DequantizeLinear they feed
        position = list(graph.node).index(consumer)
        for offset, n in enumerate(nodes):
            graph.node.insert(position + offset, n)
    _prune(graph)
    _shorten_names(graph, keep={*stored, *(f"{n}{suffix}" for n in stored for suffix in (".zero_point", ".packed"))})
    _set_opset(model, opset)
    return model, stored


def _needed_opset(model: onnx.ModelProto) -> int:
    """The opset the packed graph needs: the base one, or that of its narrowest weight storage."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    opset = max(_opset(model), _BASE_OPSET)
    for node in model.graph.node:
        found = _int8_weight(node, inits, producers)
        if found is not None:
            opset = max(opset, _OPSET_NEEDED[storage_type(found[2], found[3])])
    return opset


def _convert(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`model` rewritten for `opset` by onnx's version converter (each operator in its form there)."""
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, opset)
    except Exception as err:  # the converter raises bare RuntimeErrors / C++ errors without a type
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"the QCDQ graph cannot be converted from opset {_opset(model)} to opset {opset}, which "
                          f"its low-bit weights need ({first})",
                          fix="quantize the weights to 8 bits (opset 17 suffices), or replace the operator the "
                              "converter names") from None


def _int8_weight(node: onnx.NodeProto, inits: dict[str, TensorProto], producers: dict[str, onnx.NodeProto]
                 ) -> tuple[TensorProto, TensorProto, int, int] | None:
    """(weight, zero point, low, high) when `node` dequantizes an int8 initializer, clipped or not."""
    if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in inits:
        return None
    source, low, high = node.input[0], -128, 127
    clip = producers.get(source)
    if clip is not None:
        if clip.op_type != "Clip" or len(clip.input) < 3 or not all(i in inits for i in clip.input):
            return None
        source = clip.input[0]
        low, high = (int(numpy_helper.to_array(inits[name])) for name in clip.input[1:3])
    weight = inits.get(source)
    if weight is None or weight.data_type != TensorProto.INT8 or not weight.dims:
        return None
    return weight, inits[node.input[2]], max(low, -128), min(high, 127)


def _packed_int2(codes: np.ndarray, name: str) -> tuple[list[TensorProto], list[onnx.NodeProto]]:
    """Codes 0..3 packed four per byte (lowest bits first), and the nodes that unpack them to UINT8 `codes`."""
    flat = codes.astype(np.uint8).ravel()
    padded = np.concatenate([flat, np.zeros(-len(flat) % 4, np.uint8)]).reshape(-1, 4)
    packed = (padded[:, 0] | padded[:, 1] << 2 | padded[:, 2] << 4 | padded[:, 3] << 6).astype(np.uint8)
    p = f"{name}.unpack"
    inits = [numpy_helper.from_array(packed.reshape(-1, 1), f"{name}.packed"),
             numpy_helper.from_array(np.array([[0, 2, 4, 6]], np.uint8), f"{p}.shifts"),
             numpy_helper.from_array(np.array(3, np.uint8), f"{p}.mask"),
             numpy_helper.from_array(np.array([-1], np.int64), f"{p}.flat"),
             numpy_helper.from_array(np.array([0], np.int64), f"{p}.start"),
             numpy_helper.from_array(np.array([len(flat)], np.int64), f"{p}.end"),
             numpy_helper.from_array(np.array(codes.shape, np.int64), f"{p}.shape")]
    nodes = [helper.make_node("BitShift", [f"{name}.packed", f"{p}.shifts"], [f"{p}.shifted"], direction="RIGHT"),
             helper.make_node("BitwiseAnd", [f"{p}.shifted", f"{p}.mask"], [f"{p}.codes"]),
             helper.make_node("Reshape", [f"{p}.codes", f"{p}.flat"], [f"{p}.flat_codes"]),
             helper.make_node("Slice", [f"{p}.flat_codes", f"{p}.start", f"{p}.end"], [f"{p}.sliced"]),
             helper.make_node("Reshape", [f"{p}.sliced", f"{p}.shape"], [name])]
    return inits, nodes


def _layer_name(node_name: str) -> str:
    """`layer1.0.conv1` from brevitas' `/layer1/layer1.0/conv1/weight_quant/export_handler/DequantizeLinear`."""
    if "/weight_quant/" not in node_name:
        return ""
    parts = [p for p in node_name.split("/weight_quant/")[0].split("/") if p]
    # TorchScript scopes repeat a parent's name before its child's full name (layer1 / layer1.0).
    kept = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    return ".".join(kept)


def _unique(name: str, inits: dict[str, TensorProto], new: list[TensorProto]) -> str:
    taken = set(inits) | {t.name for t in new}
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate


def _shorten_names(graph: onnx.GraphProto, *, keep: set[str]) -> None:
    """Short names for intermediate tensors and no node names: brevitas' scoped names
    (`/layer1/layer1.0/conv1/weight_quant/export_handler/DequantizeLinear_output_0`) took a third of
    a small model's file. Graph inputs, outputs and the weights (`keep`) keep their names."""
    fixed = {v.name for v in (*graph.input, *graph.output)} | keep
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in fixed:
            return name
        return names.setdefault(name, f"t{len(names)}")

    def rename(g: onnx.GraphProto, *, outer: bool) -> None:
        for init in g.initializer:
            init.name = short(init.name)
        if not outer:  # a subgraph's own inputs and outputs are internal names (the outer graph's are fixed)
            for value in (*g.input, *g.output):
                value.name = short(value.name)
        for node in g.node:
            node.name = ""
            node.input[:] = [short(n) for n in node.input]
            node.output[:] = [short(n) for n in node.output]
            for sub in _subgraphs(node):  # they read outer tensors by name: one mapping for all scopes
                rename(sub, outer=False)
        del g.value_info[:]

    rename(graph, outer=True)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of a control-flow node (`If` branches, `Loop` / `Scan` bodies)."""
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name `node` reads, including those its subgraphs read from the outer scope."""
    names = set(node.input)
    for sub in _subgraphs(node):
        for inner in sub.node:
            names |= _reads(inner)
    return names


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody uses, then initializers nobody reads; unlist initializers as inputs."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for node in graph.node for i in _reads(node)} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    # brevitas lists initializers among the graph inputs, which stops onnxruntime from folding them.
    names = {t.name for t in graph.initializer}
    for graph_input in [i for i in graph.input if i.name in names]:
        graph.input.remove(graph_input)
    used = {i for node in graph.node for i in _reads(node)} | outputs
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def _set_opset(model: onnx.ModelProto, opset: int) -> None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    # The IR version must be one that knows this opset (and INT4 / INT2 tensors).
    needed = max(v[1] for v in helper.VERSION_TABLE if v[2] == opset)
    model.ir_version = max(model.ir_version, needed)


def _opset(model: onnx.ModelProto) -> int:
    return max((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), default=0)


def _float_weights(model: onnx.ModelProto) -> tuple[str, ...]:
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1:
            t = inits.get(node.input[1])
            if t is not None and t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(t.dims) >= 2:
                found.append(t.name)
    return tuple(found)


def _precision(weights: dict[str, Packed], float_weights: Sequence[str]) -> str:
    widths = sorted({p.kind for p in weights.values()}, key=lambda n: int(n[3:]))
    text = "/".join(widths) + (" mixed" if len(widths) > 1 else "")
    if float_weights:
        text = f"{text} + fp32" if text else "fp32"
    return text


def _output_step(model: onnx.ModelProto) -> float | None:
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {t.name: t for t in model.graph.initializer}
    node = producers.get(model.graph.output[0].name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[node.input[1]])
    return float(scale.max())


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


