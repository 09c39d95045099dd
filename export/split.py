"""Split an exported ONNX graph at cut tensors into per-tier segments (onnx.utils.Extractor), and write split bundles.

Segment k reads the tensors that cross link k-1 (segment 0 reads the model's inputs) and writes
the tensors that cross link k (the last segment writes the model's outputs). A tensor that must
pass through a tier untouched (made on the end, read only in the cloud, relayed by the edge) is
copied through by an Identity node.

Split bundles: one bundle per tier, each a normal bundle (hashed files, atomic write) whose
manifest has a `partition` section linking it to its neighbours: the plan's id, its index, the
cut tensors with shapes, dtypes and crossing quantization, and the sha256 of every segment file
of the pair — so `export.partitioned.load_pair` refuses two bundles that were not cut together.
Torch-free, compress-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, utils

from export.bundle import write_bundle
from export.errors import ExportError
from export.wire import Crossing, calibrate

__all__ = ["split_onnx", "write_split_bundles"]


def split_onnx(model_path: str | os.PathLike[str], cuts: Sequence[Sequence[str]], out_dir: str | os.PathLike[str],
               *, stem: str = "segment") -> list[Path]:
    """Write one ONNX file per segment (`len(cuts) + 1` of them) into `out_dir`; return their paths.

    >>> import tempfile, pathlib, numpy as np
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     m = tiny_onnx(pathlib.Path(d) / "m.onnx")
    ...     [p.name for p in split_onnx(m, [["input"]], d)]
    ['segment0.onnx', 'segment1.onnx']
    """
    model_path, out = Path(model_path), Path(out_dir)
    model = onnx.load(os.fspath(model_path))
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    outputs = [o.name for o in model.graph.output]
    known = {o for n in model.graph.node for o in n.output} | set(inputs)
    for k, cut in enumerate(cuts):
        missing = [t for t in cut if t not in known]
        if missing or not cut:
            raise ExportError(f"cut {k} names tensor(s) {missing or '(none)'} that the graph does not have",
                              where=str(model_path),
                              fix="cut at tensor names from the plan (`edgetier partition`) of this very model file")
    bounds = [inputs, *[list(c) for c in cuts], outputs]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    # Extractor needs every cut tensor's type and shape: infer them first, as onnx.utils.extract_model does.
    extractor = utils.Extractor(onnx.shape_inference.infer_shapes(model))
    for k in range(len(bounds) - 1):
        seg_in, seg_out = bounds[k], bounds[k + 1]
        through = [t for t in seg_out if t in seg_in]
        computed = [t for t in seg_out if t not in seg_in]
        try:
            seg = extractor.extract_model(seg_in, computed) if computed else _empty(model, seg_in)
        except Exception as err:  # noqa: BLE001 - onnx raises bare KeyError/RuntimeError for bad cuts
            raise ExportError(f"segment {k} cannot be cut out between {seg_in} and {computed} ({err})",
                              where=str(model_path), fix="cut at tensors that separate the graph (a plan's cut)") from None
        _pass_through(seg, through, extractor)
        _check_closed(seg, seg_in, k, model_path)
        seg.graph.name = f"{model.graph.name or 'model'}_{stem}{k}"
        path = out / f"{stem}{k}.onnx"
        onnx.save(seg, os.fspath(path))
        paths.append(path)
    return paths


def _empty(model: onnx.ModelProto, seg_in: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph([], "empty", [], [])
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _pass_through(seg: onnx.ModelProto, names: list[str], extractor: utils.Extractor) -> None:
    have_in = {i.name for i in seg.graph.input}
    for t in names:
        vi = extractor.value_infos[t]
        if t not in have_in:
            seg.graph.input.append(vi)
        relay = onnx.ValueInfoProto()
        relay.CopyFrom(vi)
        relay.name = f"{t}__relay"
        seg.graph.node.append(helper.make_node("Identity", [t], [relay.name]))
        seg.graph.output.append(relay)  # the next segment reads it under its own name (RELAY suffix dropped)


def _check_closed(seg: onnx.ModelProto, seg_in: list[str], k: int, where: Path) -> None:
    # Extractor silently pulls in earlier nodes when the cut does not separate the graph: refuse that.
    produced = {o for n in seg.graph.node for o in n.output}
    inits = {i.name for i in seg.graph.initializer}
    needed = {i for n in seg.graph.node for i in n.input if i} - produced - inits
    extra = sorted(needed - set(seg_in))
    if extra:
        raise ExportError(f"segment {k} needs tensor(s) {extra} that cross no cut", where=str(where),
                          fix="add them to the cut, or use the plan's cut tensors")


def write_split_bundles(model_path: str | os.PathLike[str], cuts: Sequence[Sequence[str]],
                        out_dir: str | os.PathLike[str], *, tiers: Sequence[Mapping[str, Any]],
                        crossing_dtype: str = "fp32", calib: np.ndarray | None = None,
                        input_spec: Mapping[str, Any], output_spec: Mapping[str, Any],
                        labels: Sequence[Any] = (), plan: Mapping[str, Any] | None = None) -> list[Path]:
    """Cut `model_path`, calibrate the crossing tensors on `calib` (int8), write `out_dir/<tier>/` bundles.

    `tiers`: per segment, the manifest's `target` entry (name, tier, runtime, ...). Nothing is
    left behind on failure: segments are cut in a temporary folder and each bundle is written
    atomically; bundles are written only once every segment has been cut and calibrated.
    """
    if len(tiers) != len(cuts) + 1:
        raise ExportError(f"{len(cuts) + 1} segments need {len(cuts) + 1} tiers, got {len(tiers)}",
                          fix="pass one target entry per tier")
    if crossing_dtype not in ("fp32", "fp16", "int8"):
        raise ExportError(f"unknown crossing dtype {crossing_dtype!r}", fix="use fp32, fp16 or int8")
    if crossing_dtype == "int8" and calib is None:
        raise ExportError("an int8 crossing tensor needs calibration samples", fix="pass calib= (the calib split)")
    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        paths = split_onnx(model_path, cuts, tmp)
        crossings = _calibrate(paths, cuts, calib, crossing_dtype, input_spec)
        shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
        plan_id = hashlib.sha256(json.dumps([shas, [[c.to_dict() for c in cs] for cs in crossings]],
                                            sort_keys=True).encode()).hexdigest()[:16]
        written = []
        for k, (path, target) in enumerate(zip(paths, tiers, strict=True)):
            seg = onnx.load(os.fspath(path))
            seg_inputs = [{"name": i.name, "shape": _dims(i), "dtype": "float32"} for i in seg.graph.input]
            seg_outputs = [{"name": o.name, "shape": _dims(o)} for o in seg.graph.output]
            manifest = {
                "format_version": 1, "variant": f"split-{target.get('tier', k)}", "target": dict(target),
                "input": dict(input_spec) if k == 0 else seg_inputs[0],
                "output": dict(output_spec) if k == len(paths) - 1 else seg_outputs[0],
                "labels": list(labels),
                "model": {"file": "model.onnx", "format": "onnx", "precision": "fp32"},
                "partition": {
                    "plan_id": plan_id, "index": k, "segments": len(paths),
                    "tiers": [t.get("tier") for t in tiers], "segment_sha256": shas,
                    "inputs": seg_inputs, "outputs": seg_outputs,
                    "receives": [c.to_dict() for c in crossings[k - 1]] if k else [],
                    "sends": [c.to_dict() for c in crossings[k]] if k < len(crossings) else [],
                    "crossing_dtype": crossing_dtype, "plan": dict(plan or {}),
                },
            }
            report = {"partition": manifest["partition"]}
            written.append((out / str(target.get("tier", k)), path, manifest, report))
        for dst, path, manifest, report in written:
            write_bundle(dst, files={"model.onnx": path}, manifest=manifest, report=report,
                         report_md=f"# split segment {manifest['partition']['index']}\n")
    return [w[0] for w in written]


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _calibrate(paths: list[Path], cuts: Sequence[Sequence[str]], calib: np.ndarray | None, dtype: str,
               input_spec: Mapping[str, Any]) -> list[list[Crossing]]:
    if dtype != "int8" or calib is None:
        return [[Crossing(t, dtype) for t in cut] for cut in cuts]
    from export.runtime import make_session

    feeds: dict[str, np.ndarray] = {input_spec["name"]: np.asarray(calib, np.float32)}
    out = []
    for k, cut in enumerate(cuts):
        session = make_session(paths[k])
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()}),
                          strict=True))
        feeds = {(n[: -len("__relay")] if n.endswith("__relay") else n): v for n, v in values.items()}
        out.append([calibrate(t, feeds[t], dtype) for t in cut])
    return out
