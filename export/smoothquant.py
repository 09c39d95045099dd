"""SmoothQuant-style activation smoothing of an ONNX graph's weight MatMuls (Xiao et al. 2023).

A few input channels of a transformer's activations run far larger than the rest; one int8
scale per tensor (what dynamic int8 gives activations) then spends its range on them. For an
activation X read by weight MatMuls (a `MatMul` whose B is an initializer, or onnxruntime's fused
`Attention` with its packed QKV weight), s_j = max|X_j|^alpha / max_k|W_jk|^(1-alpha) from
unlabelled calibration feeds; the weight rows are multiplied by s and X is divided by s, so the
float function is unchanged. The division is folded into the producer when X is a
`LayerNormalization` output read only by the smoothed MatMuls (pre-LN models, e.g. ViT: gamma and
beta scaled), otherwise one `Mul` is inserted and shared by X's smoothed readers (post-LN BERT,
whose LayerNorm output is also the residual).

Measured 2026-12-07 on all-MiniLM-L6-v2, dynamic int8 after fusion, mean cosine of the exported
file's embeddings to fp32 on 300 held-out stdlib docstrings (`tests/benchmarks/test_smoothquant.py`):
plain 0.99298; LayerNorm outputs smoothed (12 activations, each by a Mul: post-LN) alpha 0.5
0.99524 +- 0.00007 and alpha 0.8 0.99522 +- 0.00012 over three 256-sentence calibration draws
(1 - cosine 0.68x plain), batch-1 latency 1.00x / 0.99x plain, timed alternately. Through
`recipes/text_embedding.yaml` (seed 0, alpha 0.5, the stage's 64 calibration rows; the same trained
models re-exported without it by resuming the run): edge 0.99298 -> 0.99511, end (pruned, distilled)
0.92671 -> 0.92889 cosine to the cloud bundle. What does not
pay (`scope="all"`, one draw): smoothing the attention output too gave 0.99287 (no gain, six more
Muls); the GELU output (FFN down projection) too gave 0.98654 at alpha 0.5 and 0.99147 at 0.8,
worse than plain: its channel ranges moved into the 1536-row weights cost more than they saved.

It runs on the graph after `fuse_transformer`, so the fused Attention still becomes QAttention.
onnxruntime's own `quantize_static(extra_options={"SmoothQuant": True})` is not used: in
onnxruntime 1.32 it exists only inside `quantize_static` (read in `onnxruntime/quantization/
quantize.py`), not `quantize_dynamic`, and the neural-compressor `ORTSmoothQuant` it calls
smooths `MatMul` / `Gemm` / `Conv` only, not the fused com.microsoft `Attention`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from export.errors import ExportError

__all__ = ["SmoothResult", "smooth_activations"]

_NORMS = ("LayerNormalization", "EmbedLayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
          "SkipSimplifiedLayerNormalization", "RMSNormalization")


@dataclass(frozen=True)
class SmoothResult:
    """What `smooth_activations` did: the smoothed activations, how each was divided, and the
    spread of channel ranges (max over channels / median over channels of max|X_j|) before and after."""

    alpha: float
    folded: list[str] = field(default_factory=list)  # divided inside the producing LayerNormalization
    mul: list[str] = field(default_factory=list)  # divided by an inserted Mul
    matmuls: int = 0  # weight MatMul / Attention nodes whose rows were scaled
    spread_before: float = 1.0  # median over smoothed activations of max_j / median_j of max|X_j|
    spread_after: float = 1.0
    calib_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "activations": len(self.folded) + len(self.mul), "folded": len(self.folded),
                "mul": len(self.mul), "matmuls": self.matmuls, "channel_spread_before": round(self.spread_before, 2),
                "channel_spread_after": round(self.spread_after, 2), "calib_rows": self.calib_rows}


def _weight_input(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> str | None:
    """The name of the 2-D [in, out] weight that multiplies input 0, or None."""
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") or \
            node.op_type == "Attention" and node.domain == "com.microsoft":
        if len(node.input) > 1 and node.input[1] in inits and node.input[0] not in inits \
                and len(inits[node.input[1]].dims) == 2:
            return node.input[1]
    return None


def _candidates(model: onnx.ModelProto, *, scope: str) -> dict[str, list[tuple[onnx.NodeProto, str]]]:
    """activation name -> the (node, weight name) pairs that read it as input 0; with `scope="norm"`
    only activations a normalization writes."""
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producer = {out: node for node in model.graph.node for out in node.output}
    found: dict[str, list[tuple[onnx.NodeProto, str]]] = {}
    for node in model.graph.node:
        weight = _weight_input(node, inits)
        if weight is None or uses[weight] != 1:  # a shared (tied) weight would change its other readers
            continue
        x = node.input[0]
        if scope == "norm" and (x not in producer or producer[x].op_type not in _NORMS):
            continue
        found.setdefault(x, []).append((node, weight))
    return found


def _feeds(feeds: Mapping[str, np.ndarray], names: Iterable[str], batch: int) -> Iterable[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch):
        yield {k: np.asarray(feeds[k][start:start + batch]) for k in names}


def _channel_max(model: onnx.ModelProto, names: list[str], feeds: Mapping[str, np.ndarray], *,
                 batch: int = 32) -> dict[str, np.ndarray]:
    """max|X_j| per last-axis channel of each named tensor over the feeds. Rows padded away by an
    `attention_mask` input of the same [batch, sequence] shape do not count: at run time a
    batch-1 sentence has no padding, so the padded positions' values are not ranges it sees."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in have)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensors as named
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    if len(inputs) == 1 and len(feeds) == 1:  # one input: its name need not match
        feeds = {inputs[0]: next(iter(feeds.values()))}
    missing = [n for n in inputs if n not in feeds]
    if missing:
        raise ExportError(f"the calibration feeds lack the graph input(s) {', '.join(missing)}",
                          where="smooth_activations", fix=f"pass arrays for every input: {', '.join(inputs)}")
    out = {n: np.zeros(0, np.float32) for n in names}
    for feed in _feeds(feeds, inputs, batch):
        mask = feed.get("attention_mask")
        for n, x in zip(names, session.run(names, feed), strict=True):
            x = np.abs(x)
            if mask is not None and x.ndim == 3 and x.shape[:2] == mask.shape:
                x = x[mask.astype(bool)]
            if not x.size:  # every row of this batch padded away
                continue
            m = x.reshape(-1, x.shape[-1]).max(axis=0)
            out[n] = m if not out[n].size else np.maximum(out[n], m)
    return out


def _spread(m: np.ndarray) -> float:
    return float(m.max() / max(np.median(m), 1e-12))


def smooth_activations(src: str | os.PathLike[str], dst: str | os.PathLike[str], feeds: Mapping[str, np.ndarray],
                       *, alpha: float = 0.5, scope: Literal["norm", "all"] = "norm", insert_mul: bool = True,
                       calib_rows: int = 256) -> SmoothResult:
    """Smooth every activation read by weight MatMuls of the ONNX file `src`, written to `dst`.

    `feeds` maps each graph input to calibration rows (no labels; the first `calib_rows` are
    used). `scope="norm"` smooths the activations a LayerNorm (or onnxruntime's fused
    Embed/Skip LayerNorm) writes; `"all"` also the attention output (read by the output
    projection) and the GELU output (the FFN down projection), which the module notes show do
    not pay. `insert_mul=False` smooths only the activations whose division folds into their
    LayerNorm (for static QDQ, which would quantize the inserted Mul's input, outliers and all).
    The fp32 function is unchanged up to float rounding.

    >>> import tempfile, pathlib, numpy as np
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     m = tiny_onnx(pathlib.Path(d) / "m.onnx")
    ...     smooth_activations(m, pathlib.Path(d) / "s.onnx", {"x": np.ones((8, 4), np.float32)}).matmuls
    0
    """
    if not 0 < alpha < 1:
        raise ExportError(f"smoothing alpha {alpha} is outside (0, 1)", where="smooth_activations",
                          fix="use 0.5 (SmoothQuant's default) or a value strictly between 0 and 1")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ExportError("ONNX file to smooth not found", where=str(src), fix="export the fp32 model first")
    if not feeds:
        raise ExportError("smoothing needs calibration rows", where="smooth_activations",
                          fix="pass calibration inputs (a few hundred unlabelled rows)")
    model = onnx.load(os.fspath(src))
    if scope not in ("norm", "all"):
        raise ExportError(f"smoothing scope {scope!r} is not one of 'norm', 'all'", where="smooth_activations",
                          fix="use scope='norm' (the measured default) or 'all'")
    found = _candidates(model, scope=scope)
    feeds = {k: np.asarray(v)[:calib_rows] for k, v in feeds.items()}
    rows = len(next(iter(feeds.values())))
    if not found:
        onnx.save(model, os.fspath(dst))
        return SmoothResult(alpha=alpha, calib_rows=rows)
    act = _channel_max(model, list(found), feeds)
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producer = {out: node for node in model.graph.node for out in node.output}
    outputs = {o.name for o in model.graph.output}
    folded, mul, before, after, nodes_done = [], [], [], [], 0
    new_nodes: dict[str, onnx.NodeProto] = {}  # producer output -> Mul inserted after it
    for x, consumers in found.items():
        prod = producer.get(x)
        others = [r for r in readers.get(x, []) if r.op_type != "Shape" and all(r is not c for c, _ in consumers)]
        affine = [_constant(name, inits, producer) for name in prod.input[1:3]] if prod is not None else []
        fold = not others and x not in outputs and prod is not None and prod.op_type == "LayerNormalization" \
            and prod.domain in ("", "ai.onnx") and all(v is not None and v.shape == act[x].shape for v in affine)
        if not fold and not insert_mul:
            continue
        weights = {w: numpy_helper.to_array(inits[w]) for _, w in consumers}
        a = act[x].astype(np.float64)
        if a.shape[0] != next(iter(weights.values())).shape[0]:
            continue  # the last axis is not the MatMul's reduction axis (a transposed read)
        w = np.max(np.concatenate([np.abs(v) for v in weights.values()], axis=1), axis=1).astype(np.float64)
        s = np.where((a > 0) & (w > 0), np.power(np.maximum(a, 1e-12), alpha) / np.power(np.maximum(w, 1e-12),
                                                                                           1 - alpha), 1.0)
        s = np.clip(s, 1e-4, 1e4)
        for name, v in weights.items():
            inits[name].CopyFrom(numpy_helper.from_array((v * s[:, None]).astype(v.dtype), name))
        nodes_done += len(consumers)
        before.append(_spread(a))
        after.append(_spread(a / s))
        if fold:  # 1-D gamma / beta over X's channels: the division moves into them
            for i, v in enumerate(affine, start=1):  # new initializers: the old ones may be shared (deduplicated)
                name = f"{prod.output[0]}_smooth_{('gamma', 'beta')[i - 1]}"
                model.graph.initializer.append(numpy_helper.from_array((v / s).astype(v.dtype), name))
                prod.input[i] = name
            folded.append(x)
            continue
        scale = f"{x}_smooth_inv"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), scale))
        smoothed = f"{x}_smooth"
        new_nodes[x] = onnx.helper.make_node("Mul", [x, scale], [smoothed], name=f"{x}_smooth_mul")
        for node, _ in consumers:
            node.input[0] = smoothed
        mul.append(x)
    if new_nodes:  # each Mul right after its producer (graph inputs: at the front), keeping topological order
        order: list[onnx.NodeProto] = [new_nodes[x] for x in new_nodes if x not in producer]
        for node in model.graph.node:
            order.append(node)
            order.extend(new_nodes[o] for o in node.output if o in new_nodes)
        del model.graph.node[:]
        model.graph.node.extend(order)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, os.fspath(dst))
    return SmoothResult(alpha=alpha, folded=folded, mul=mul, matmuls=nodes_done,
                        spread_before=float(np.median(before)) if before else 1.0,
                        spread_after=float(np.median(after)) if after else 1.0, calib_rows=rows)


def _constant(name: str, inits: Mapping[str, onnx.TensorProto], producer: Mapping[str, onnx.NodeProto]
              ) -> np.ndarray | None:
    """The value of a constant tensor: an initializer, possibly behind the `Identity` nodes torch.onnx
    writes when it deduplicates equal weights (e.g. every LayerNorm bias still at its init of zeros)."""
    while name not in inits and name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    return numpy_helper.to_array(inits[name]) if name in inits else None
