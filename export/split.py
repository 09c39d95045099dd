"""Split an exported ONNX graph at cut tensors into per-tier segments (onnx.utils.Extractor), and write split bundles.

Segment k reads the tensors that cross link k-1 (segment 0 reads the model's inputs) and writes
the tensors that cross link k (the last segment writes the model's outputs). A tensor that must
pass through a tier untouched (made on the end, read only in the cloud, relayed by the edge) is
copied through by an Identity node.

Split bundles: one bundle per tier, each a normal bundle (hashed files), the set written atomically, whose
manifest has a `partition` section linking it to its neighbours: the plan's id, its index, the
cut tensors with shapes, dtypes and crossing quantization, and the sha256 of every segment file
of the pair — so `export.partitioned.load_split` refuses two bundles that were not cut together.
Torch-free, compress-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, utils

from export.bundle import _swap_in, write_bundle
from export.errors import ExportError
from export.manifest import MANIFEST
from export.policy import CRITERIA
from export.split_format import ShippedSegment, ship_segment
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
                        labels: Sequence[Any] = (), plan: Mapping[str, Any] | None = None,
                        early_exit: Mapping[str, Any] | None = None) -> list[Path]:
    """Cut `model_path`, calibrate the crossing tensors on `calib` (int8), write `out_dir/<tier>/` bundles.

    `tiers`: per segment, the manifest's `target` entry (name, tier, runtime, export_format,
    tolerance); a segment whose target's `export_format` is `tflite` ships as .tflite when it
    converts and matches (export.split_format), else as .onnx with a `format_note` saying why.

    The pair is written atomically as a whole: every bundle goes into one hidden staging folder
    next to `out_dir`, which replaces `out_dir` by a rename only once all of them are complete. A
    failure at any point leaves `out_dir` as it was (absent, or the previous pair) and no staging
    folder behind.

    `early_exit` (Edgent): `{"model": ONNX file of an exit head, "reads": a tensor of the first cut,
    "criterion": confidence | entropy | normalized_entropy, "threshold": float}`; the end bundle
    carries it as `exit.onnx`, and rows it answers are never sent (export.partitioned).
    """
    if len(tiers) != len(cuts) + 1:
        raise ExportError(f"{len(cuts) + 1} segments need {len(cuts) + 1} tiers, got {len(tiers)}",
                          fix="pass one target entry per tier")
    if crossing_dtype not in ("fp32", "fp16", "int8"):
        raise ExportError(f"unknown crossing dtype {crossing_dtype!r}", fix="use fp32, fp16 or int8")
    if crossing_dtype == "int8" and calib is None:
        raise ExportError("an int8 crossing tensor needs calibration samples", fix="pass calib= (the calib split)")
    _check_exit(early_exit, cuts)
    out = Path(out_dir)
    _check_split_folder(out)
    with tempfile.TemporaryDirectory() as tmp:
        paths = split_onnx(model_path, cuts, tmp)
        samples = _samples(paths[0], calib, input_spec)
        feeds = _segment_inputs(paths, samples)
        crossings = [[calibrate(t, feeds[k + 1][t], crossing_dtype) for t in cut] if crossing_dtype == "int8"
                     else [Crossing(t, crossing_dtype) for t in cut] for k, cut in enumerate(cuts)]
        shipped = []
        for k, (path, target) in enumerate(zip(paths, tiers, strict=True)):
            only = next(iter(feeds[k].values())) if len(feeds[k]) == 1 else np.zeros(0, np.float32)
            shipped.append(ship_segment(path, target, only, Path(tmp)))
        shas = [hashlib.sha256(s.path.read_bytes()).hexdigest() for s in shipped]
        plan_id = hashlib.sha256(json.dumps([shas, [[c.to_dict() for c in cs] for cs in crossings]],
                                            sort_keys=True).encode()).hexdigest()[:16]
        stage = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
        try:
            for k, (path, target, ship) in enumerate(zip(paths, tiers, shipped, strict=True)):
                manifest = _manifest(k, path, target, ship, tiers=tiers, plan_id=plan_id, shas=shas,
                                     crossings=crossings, crossing_dtype=crossing_dtype, input_spec=input_spec,
                                     output_spec=output_spec, labels=labels, plan=plan)
                files: dict[str, Path] = {ship.model["file"]: ship.path}
                if early_exit is not None and k == 0:
                    files["exit.onnx"] = Path(early_exit["model"])
                    manifest["partition"]["exit"] = {"file": "exit.onnx", "reads": early_exit["reads"],
                                                     "criterion": early_exit["criterion"],
                                                     "threshold": float(early_exit["threshold"])}
                write_bundle(stage / str(target.get("tier", k)), files=files,
                             manifest=manifest, report={"partition": manifest["partition"]},
                             report_md=f"# split segment {k}\n")
            _swap_in(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return [out / str(t.get("tier", k)) for k, t in enumerate(tiers)]


def _manifest(k: int, path: Path, target: Mapping[str, Any], ship: ShippedSegment, *, tiers: Sequence[Mapping[str, Any]],
              plan_id: str, shas: list[str], crossings: list[list[Crossing]], crossing_dtype: str,
              input_spec: Mapping[str, Any], output_spec: Mapping[str, Any], labels: Sequence[Any],
              plan: Mapping[str, Any] | None) -> dict[str, Any]:
    seg = onnx.load(os.fspath(path))
    seg_inputs = [{"name": i.name, "shape": _dims(i), "dtype": "float32"} for i in seg.graph.input]
    seg_outputs = [{"name": o.name, "shape": _dims(o)} for o in seg.graph.output]
    last = k == len(tiers) - 1
    partition = {
        "plan_id": plan_id, "index": k, "segments": len(tiers),
        "tiers": [t.get("tier") for t in tiers], "segment_sha256": shas,
        "inputs": seg_inputs, "outputs": seg_outputs,
        "receives": [c.to_dict() for c in crossings[k - 1]] if k else [],
        "sends": [c.to_dict() for c in crossings[k]] if not last else [],
        "crossing_dtype": crossing_dtype, "plan": dict(plan or {}),
    }
    if ship.note:
        partition["format_note"] = ship.note
    return {
        "format_version": 1, "variant": f"split-{target.get('tier', k)}", "target": dict(target),
        "input": dict(input_spec) if k == 0 else seg_inputs[0],
        "output": dict(output_spec) if last else seg_outputs[0],
        "labels": list(labels), "model": dict(ship.model), "partition": partition,
    }


def _check_exit(early_exit: Mapping[str, Any] | None, cuts: Sequence[Sequence[str]]) -> None:
    if early_exit is None:
        return
    missing = [k for k in ("model", "reads", "criterion", "threshold") if k not in early_exit]
    if missing:
        raise ExportError(f"the exit lacks {missing}", where="early_exit",
                          fix="give model, reads, criterion and threshold")
    if early_exit["reads"] not in cuts[0]:
        raise ExportError(f"the exit reads {early_exit['reads']!r}, which the end segment does not send ({list(cuts[0])})",
                          where="early_exit.reads", fix="attach the exit to a tensor of the first cut")
    if early_exit["criterion"] not in CRITERIA:
        raise ExportError(f"unknown exit criterion {early_exit['criterion']!r}", where="early_exit.criterion",
                          fix=f"use one of {', '.join(CRITERIA)}")
    if not Path(early_exit["model"]).is_file():
        raise ExportError("the exit head's ONNX file does not exist", where=str(early_exit["model"]),
                          fix="export the exit head first")


def _check_split_folder(out: Path) -> None:
    # The pair replaces `out` as a whole: only a folder of bundles (a previous pair) or an empty one may go.
    if not out.exists():
        return
    if not out.is_dir() or any(not (p / MANIFEST).is_file() for p in out.iterdir()):
        raise ExportError("the folder for the split bundles exists and holds something other than bundles; "
                          "refusing to replace it", where=str(out), fix="choose another --out folder")


def _samples(head: Path, calib: np.ndarray | None, input_spec: Mapping[str, Any]) -> np.ndarray:
    """The calib split, or (fp32/fp16 crossing, no calib) 16 seeded standard-normal inputs for the format check."""
    if calib is not None:
        return np.asarray(calib, np.float32)
    dims = list(input_spec.get("shape") or [])[1:]
    if not dims or any(not isinstance(d, int) for d in dims):
        dims = [d for d in _dims(onnx.load(os.fspath(head)).graph.input[0])[1:]]
    if any(not isinstance(d, int) or d < 1 for d in dims):
        raise ExportError(f"the model's input shape {dims} is not fixed, so no check inputs can be drawn",
                          fix="pass calib= samples")
    return np.random.default_rng(0).standard_normal((16, *dims)).astype(np.float32)


def _segment_inputs(paths: list[Path], x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """What each segment reads when the whole chain runs on `x` (ONNX segments, onnxruntime)."""
    from export.runtime import make_session

    feeds: dict[str, np.ndarray] = {}
    out = []
    for k, path in enumerate(paths):
        session = make_session(path)
        if k == 0:
            feeds = {session.get_inputs()[0].name: x}
        out.append({i.name: feeds[i.name] for i in session.get_inputs()})
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, out[-1]) if names else []
        feeds = {(n[: -len("__relay")] if n.endswith("__relay") else n): v for n, v in zip(names, values, strict=True)}
    out.append(feeds)  # what the last segment writes: the logits
    return out


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
