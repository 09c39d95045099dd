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
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

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
) -> AccuracyAwareResult:
    """Quantize `fp32_path` to int8 at `dst`, falling back layers to fp32 until the bound holds on `val_x`.

    Exactly one of `max_loss` (points of accuracy on `val_y`) and `min_agreement` (share of
    `val_x` whose top-1 answer matches the fp32 file) is given. With `fallback=False` (an
    int8-only target) the all-int8 file is measured and returned as it is.
    """
    if (max_loss is None) == (min_agreement is None):
        raise ValueError("give exactly one of max_loss and min_agreement")
    if max_loss is not None and val_y is None:
        raise ValueError("max_loss needs validation labels; use min_agreement without labels")
    dst = Path(dst)
    ref = _outputs(Path(fp32_path), val_x)
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
        int8_path = quantizer.write(tmp / "all-int8.onnx", per_channel=per_channel, activations=activations)
        out = _outputs(int8_path, val_x)
        int8_metric = final_metric = measure(out)
        chosen: list[str] = []
        excluded: set[str] = set()
        best_path = int8_path
        if not holds(int8_metric) and fallback:
            units = fallback_units(quantizer.pre, quantizer.nodes)
            errors = {}
            for i, layer in enumerate(quantizer.nodes):
                trial = quantizer.write(tmp / "trial.onnx", per_channel=per_channel, nodes_to_exclude=units[layer],
                                       activations=activations)
                errors[layer] = float(np.mean((_outputs(trial, val_x) - ref) ** 2))
                say(f"sensitivity {i + 1}/{len(quantizer.nodes)}: {layer} -> output MSE {errors[layer]:.3g}")
            for layer in sorted(errors, key=errors.__getitem__):  # lowest error when in fp32 = most sensitive
                chosen.append(layer)
                excluded |= set(units[layer])
                best_path = quantizer.write(tmp / f"fallback-{len(chosen)}.onnx", per_channel=per_channel,
                                            nodes_to_exclude=sorted(excluded), activations=activations)
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
