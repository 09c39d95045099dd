"""Accuracy-aware static int8: keep the most sensitive layers in fp32 until an accuracy bound holds.

Like Intel Neural Compressor's accuracy-driven tuning and NNCF's accuracy-aware quantization,
on the exported ONNX file with onnxruntime's quantizer (`nodes_to_exclude`):

1. quantize everything and measure on the validation split: accuracy lost in points against
   the fp32 file (`max_loss`, needs labels) or top-1 agreement with the fp32 file
   (`min_agreement`, no labels);
2. if the bound misses, rank the weighted layers (Conv / Gemm / MatMul) by sensitivity: the
   output error (mean squared difference from fp32 logits) left when only that layer falls back;
3. fall back layers in that order, cumulatively, re-quantizing from the same calibration, until
   the bound holds or nothing is left.

A layer falls back together with the path that feeds it from the previous weighted layer (that
layer included): in a QDQ graph a tensor is quantized when its producer *or* any consumer is, so
keeping only a layer in fp32 would still feed it a quantized input. The report names every
fallback layer and the size the fallback costs.

When the file to quantize was prepared for int8 (bias correction, learned rounding, int8
distillation), its weights only make sense rounded: pass the model before that preparation as
`reference` (same graph). The bound is then measured against the reference's outputs, and every
layer kept in fp32 takes its weights and bias back from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.errors import ExportError
from export.quantize import Int8Quantizer
from export.runtime import open_model

__all__ = ["AccuracyAwareResult", "accuracy_aware_int8", "fallback_units"]


@dataclass(frozen=True)
class AccuracyAwareResult:
    """What the search did: the file, the bound, the numbers before and after, the fallback list."""

    path: Path
    bound: str                   # "max_loss 0.5 pt" or "min_agreement 99.0 %"
    met: bool
    int8_metric: float           # loss in points, or agreement share, of the all-int8 file
    final_metric: float
    fallback: tuple[str, ...]    # weighted layers (ONNX node names) kept in fp32, most sensitive first
    excluded_nodes: int          # all nodes kept in fp32 (layers and the paths feeding them)
    int8_bytes: int              # the all-int8 file
    final_bytes: int
    fp32_accuracy: float | None
    final_accuracy: float | None

    def to_dict(self) -> dict[str, object]:
        return {"bound": self.bound, "met": self.met, "int8_metric": self.int8_metric,
                "final_metric": self.final_metric, "fallback_layers": list(self.fallback),
                "excluded_nodes": self.excluded_nodes, "int8_bytes": self.int8_bytes,
                "final_bytes": self.final_bytes, "fallback_size_cost": self.final_bytes / self.int8_bytes,
                "fp32_accuracy": self.fp32_accuracy, "final_accuracy": self.final_accuracy}


def fallback_units(model_path: str | os.PathLike[str], layers: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Per weighted layer, the nodes to keep in fp32 so that it also sees an fp32 input.

    Walks back from the layer's data input (input 0) through nodes that are not weighted
    layers, up to and including the weighted layer(s) producing it, or the graph input.
    """
    graph = onnx.load(os.fspath(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    weighted = set(layers)
    units = {}
    for node in graph.node:
        if node.name not in weighted:
            continue
        unit, stack, seen = [node.name], [node.input[0]], set()
        while stack:
            tensor = stack.pop()
            src = producer.get(tensor)
            if src is None or src.name in seen:
                continue
            seen.add(src.name)
            unit.append(src.name)
            if src.name not in weighted:
                stack.extend(i for i in src.input if i in producer)
        units[node.name] = tuple(unit)
    return units


def _layer_tensors(path: Path, nodes: tuple[str, ...]) -> list[tuple[str, str, dict[int, np.ndarray]]]:
    """Per weighted node of a pre-processed file, in graph order: (name, op type, {input slot: initializer})."""
    graph = onnx.load(os.fspath(path)).graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes)
    return [(n.name, n.op_type, {k: numpy_helper.to_array(inits[t]) for k, t in enumerate(n.input) if k and t in inits})
            for n in graph.node if n.name in wanted]


def _shape(tensors: dict[int, np.ndarray]) -> tuple[int, ...] | None:
    return tensors[1].shape if 1 in tensors else None


def _reference_restorer(quantizer: Int8Quantizer, reference: Path) -> Callable[[Path, set[str]], None]:
    """A function putting `reference`'s weights and biases back into the fp32 layers of a file `quantizer` wrote.

    The reference is pre-processed like the source and its weighted layers are matched in graph order,
    which must agree in op type and weight shape (only the values may differ)."""
    pre = Path(quantizer.pre).with_name("reference.pre.onnx")
    quant_pre_process(os.fspath(reference), os.fspath(pre))
    ours = _layer_tensors(quantizer.pre, quantizer.nodes)
    graph = onnx.load(os.fspath(pre), load_external_data=False).graph
    theirs = _layer_tensors(pre, tuple(n.name for n in graph.node if n.op_type in {op for _, op, _ in ours}))
    same = len(ours) == len(theirs) and all(
        a[1] == b[1] and _shape(a[2]) == _shape(b[2]) for a, b in zip(ours, theirs, strict=False))
    if not same:
        raise ExportError(f"the reference file has another graph than the file to quantize ({len(theirs)} weighted "
                          f"layers against {len(ours)}, or other types / weight shapes)", where=os.fspath(reference),
                          fix="export the reference from the same architecture, before bias correction / learned "
                              "rounding / int8 distillation changed its values")
    restore: dict[str, dict[int, np.ndarray]] = {}
    for (name, _op, mine), (_n, _o, ref) in zip(ours, theirs, strict=True):
        # a bias the preparation added (bias correction gives one to layers without) is zero in the reference
        restore[name] = {k: ref.get(k, np.zeros_like(v)) for k, v in mine.items()}

    def put_back(path: Path, excluded: set[str]) -> None:
        model = onnx.load(os.fspath(path))
        inits = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            for k, value in restore.get(node.name, {}).items() if node.name in excluded else ():
                init = inits.get(node.input[k]) if k < len(node.input) else None
                if init is not None and init.data_type == onnx.TensorProto.FLOAT and tuple(init.dims) == value.shape:
                    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
        onnx.save(model, os.fspath(path))

    return put_back


def _outputs(path: Path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    session = open_model(path, threads=1)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def accuracy_aware_int8(
    fp32_path: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calib_x: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray | None = None,
    *,
    max_loss: float | None = None,
    min_agreement: float | None = None,
    calibration: str = "minmax",
    per_channel: bool = True,
    fallback: bool = True,
    progress: Callable[[str], None] | None = None,
    activations: str = "int8",
    reference: str | os.PathLike[str] | None = None,
) -> AccuracyAwareResult:
    """Quantize `fp32_path` to int8 at `dst`, falling back layers to fp32 until the bound holds on `val_x`.

    Exactly one of `max_loss` (points of accuracy on `val_y`) and `min_agreement` (share of
    `val_x` whose top-1 answer matches the fp32 file) is given. With `fallback=False` (an
    int8-only target) the all-int8 file is measured and returned as it is. `reference`: the fp32 file
    of the model before int8 preparation (module docstring); the bound is measured against it.
    """
    if (max_loss is None) == (min_agreement is None):
        raise ValueError("give exactly one of max_loss and min_agreement")
    if max_loss is not None and val_y is None:
        raise ValueError("max_loss needs validation labels; use min_agreement without labels")
    dst = Path(dst)
    if reference is not None and not Path(reference).is_file():
        raise ExportError("reference ONNX file not found", where=os.fspath(reference),
                          fix="export the model before int8 preparation to that path, or leave reference out")
    ref = _outputs(Path(reference if reference is not None else fp32_path), val_x)
    fp32_acc = float((ref.argmax(1) == val_y).mean()) if val_y is not None else None

    def measure(out: np.ndarray) -> float:  # the bound's metric: loss in points, or agreement share
        if max_loss is not None:
            return 100.0 * (fp32_acc - float((out.argmax(1) == val_y).mean()))
        return float((out.argmax(1) == ref.argmax(1)).mean())

    def holds(metric: float) -> bool:
        return metric <= max_loss if max_loss is not None else metric >= min_agreement

    bound = f"max_loss {max_loss:g} pt" if max_loss is not None else f"min_agreement {100 * min_agreement:g} %"
    say = progress or (lambda _msg: None)
    with Int8Quantizer(fp32_path, calib_x, calibration=calibration) as quantizer:
        tmp = Path(quantizer.cache).parent
        put_back = _reference_restorer(quantizer, Path(reference)) if reference is not None else None

        def write(name: str, exclude: set[str]) -> Path:
            path = quantizer.write(tmp / name, per_channel=per_channel, nodes_to_exclude=sorted(exclude),
                                   activations=activations)
            if put_back is not None and exclude:
                put_back(path, exclude)
            return path

        int8_path = write("all-int8.onnx", set())
        out = _outputs(int8_path, val_x)
        int8_metric = final_metric = measure(out)
        chosen: list[str] = []
        excluded: set[str] = set()
        best_path = int8_path
        if not holds(int8_metric) and fallback:
            units = fallback_units(quantizer.pre, quantizer.nodes)
            errors = {}
            for i, layer in enumerate(quantizer.nodes):
                trial = write("trial.onnx", set(units[layer]))
                errors[layer] = float(np.mean((_outputs(trial, val_x) - ref) ** 2))
                say(f"sensitivity {i + 1}/{len(quantizer.nodes)}: {layer} -> output MSE {errors[layer]:.3g}")
            for layer in sorted(errors, key=errors.__getitem__):  # lowest error when in fp32 = most sensitive
                chosen.append(layer)
                excluded |= set(units[layer])
                best_path = write(f"fallback-{len(chosen)}.onnx", excluded)
                out = _outputs(best_path, val_x)
                final_metric = measure(out)
                say(f"fallback {len(chosen)}: {layer} -> {bound.split()[0]} metric {final_metric:.4g}")
                if holds(final_metric):
                    break
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(best_path.read_bytes())
        int8_bytes = int8_path.stat().st_size
    return AccuracyAwareResult(
        path=dst, bound=bound, met=holds(final_metric), int8_metric=int8_metric, final_metric=final_metric,
        fallback=tuple(chosen), excluded_nodes=len(excluded), int8_bytes=int8_bytes, final_bytes=dst.stat().st_size,
        fp32_accuracy=fp32_acc,
        final_accuracy=float((out.argmax(1) == val_y).mean()) if val_y is not None else None)
