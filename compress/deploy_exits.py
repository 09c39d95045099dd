"""Export a model with early exits as segments plus a policy, calibrate it, and measure it.

Each segment is exported to its own file in the target's format (.onnx, or .tflite for LiteRT
targets) and checked against PyTorch; thresholds are calibrated on the validation split with the
exported segments in their runtime; accuracy, the
share of samples leaving at each exit, mean MACs per sample and the expected batch-1 latency
are measured on the test split with the same progressive runtime a device uses.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.core.errors import EdgetierError
from compress.core.measure import count_macs, count_nonzero, count_params
from compress.core.report import ModelReport, StageReport, bundle_figures
from compress.core.technique import ExportPlan
from compress.datasets import Dataset
from compress.deploy import PARITY_SAMPLES, BundleSpec, _manifest, _stage_notes
from compress.exits.branches import EarlyExitModel
from compress.exits.calibrate import calibrate
from compress.exits.segments import split
from compress.targets.latency import estimate_latency
from export.bundle import write_bundle
from export.errors import ParityError
from export.measure import compressed_bytes, latency_ms, model_stats
from export.onnx import check_parity, export_onnx
from export.quantize import quantize_int8_static
from export.report import render_markdown
from export.runtime import open_model, run_all_exits, run_segments
from export.sparse_store import store_sparse_file
from export.tflite import check_parity_tflite, export_tflite


def deploy_exits(model: EarlyExitModel, spec: BundleSpec, *, data: Dataset, example_inputs: tuple[torch.Tensor, ...],
                 export_plan: ExportPlan | None, stages: list[StageReport], out_dir: Path) -> dict[str, Any]:
    """Export `model` as segments into the bundle folder `out_dir`; returns its report entry."""
    model = model.eval()
    target = spec.target
    notes = [*_stage_notes(stages), f"{len(model.exits)} early exits after {', '.join(model.after)}; exported as "
             f"{len(model.exits) + 1} segments plus a threshold policy in the manifest"]
    quantize = export_plan is not None and export_plan.quantize == "int8_static"
    if export_plan is not None and (export_plan.max_loss is not None or export_plan.min_agreement is not None):
        notes.append("accuracy-aware int8 is not applied to segmented exports: every segment is fully int8")
    fmt = spec.export_formats[0]  # the segments take the target's format; added formats are not made for them
    if len(spec.export_formats) > 1:
        notes.append(f"segmented exports carry one format: {fmt} (not {', '.join(spec.export_formats[1:])})")
    segments = split(model)
    specs, files, seg_macs = [], {}, []
    with tempfile.TemporaryDirectory(prefix="edgetier-exits-") as tmp:
        feed = example_inputs[0]
        check = torch.from_numpy(data.test.x[:PARITY_SAMPLES])
        calib = torch.from_numpy(data.calib.x[:export_plan.calib_samples]) if quantize else None
        segment_agreement: list[float] = []
        sparse = {"tensors": 0, "dense_bytes": 0, "stored_bytes": 0, "segments": []}
        for k, segment in enumerate(segments):
            last = k == len(segments) - 1
            name = f"segment_{k}.{fmt}"
            # distinct names per cut: an input and an output of one graph may not share a name
            inputs = "input" if k == 0 else f"features_{k - 1}"
            outputs = ["logits"] if last else [f"exit_logits_{k}", f"features_{k}"]
            if fmt == "tflite":  # outputs in the module's order (exit logits, features), as the runtime reads them
                path = export_tflite(segment.eval(), (feed,), Path(tmp) / name)
                parity = check_parity_tflite(path, segment, check.numpy(), atol=target.tolerance.atol,
                                             rtol=target.tolerance.rtol)
            else:
                path = export_onnx(segment.eval(), (feed,), Path(tmp) / name, input_name=inputs, output_name=outputs)
                parity = check_parity(path, segment, check.numpy(), atol=target.tolerance.atol,
                                      rtol=target.tolerance.rtol)
            if not parity.passed:
                raise ParityError(f"segment {k} differs from PyTorch by {parity.max_abs_diff:.3g}", where=spec.name,
                                  fix="report this model; an operator exports differently from its PyTorch meaning")
            if quantize:  # each segment calibrated on what the float segments before it hand on
                path, agree = _int8_segment(path, segment, calib, check.numpy(), export_plan, fmt=fmt, feed=feed)
                segment_agreement.append(agree)
            if fmt == "onnx":
                path = _sparse_segment(path, inputs, check.numpy(), sparse)
            seg_macs.append(count_macs(segment, (feed,)))
            with torch.no_grad():
                if not last:
                    feed, check = segment(feed)[1], segment(check)[1]
                    calib = segment(calib)[1] if quantize else None
            specs.append({"file": name, "input": inputs, "outputs": outputs})
            files[name] = path
        sessions = [open_model(files[s["file"]], threads=2) for s in specs]
        precision = "int8" if quantize else "fp32"
        if quantize:  # the whole int8 chain against the float model, as the device runs it
            chain = run_all_exits(sessions, specs, data.test.x[:PARITY_SAMPLES])[-1]
            with torch.no_grad():
                ref = model(torch.from_numpy(data.test.x[:PARITY_SAMPLES]))
            agreement = float((chain.argmax(1) == ref.numpy().argmax(1)).mean())
            need = target.tolerance.quantized_top1_agreement
            if agreement < need:
                raise ParityError(f"the int8 segments agree with PyTorch on the final top-1 for {agreement:.1%} of "
                                  f"{PARITY_SAMPLES} test samples, below the target's {need:.0%}", where=spec.name,
                                  fix="skip ptq_int8 for this variant, or use another `calibration`")
            how = "onnxruntime static QDQ" if fmt == "onnx" else "LiteRT PT2E"
            notes.append(f"segments quantized to int8 ({how}, {export_plan.calibration} calibration, each on the float "
                         f"features the segments before it hand on): the int8 chain's final top-1 agrees with "
                         f"PyTorch on {agreement:.1%} of {PARITY_SAMPLES} test samples; each segment's first output "
                         "(exit logits, then the final logits) alone: "
                         + ", ".join(f"{a:.1%}" for a in segment_agreement)
                         + " (an exit's near-ties flip most; its thresholds are calibrated on the int8 chain)")
        if sparse["tensors"]:
            notes.append(f"sparse weights stored sparse in segment(s) {', '.join(map(str, sparse['segments']))}: "
                         f"{sparse['tensors']} tensor(s), {sparse['dense_bytes']:,} -> {sparse['stored_bytes']:,} B "
                         "(kept values + uint8 gaps, rebuilt in the graph; onnxruntime's outputs bit-identical to the "
                         "dense segments')")
        policy = model.policy
        val = run_all_exits(sessions, specs, data.val.x)
        try:
            cal = calibrate(val, data.val.y, criterion=policy["criterion"], target_accuracy=policy["target_accuracy"],
                            exit_rate=policy["exit_rate"], thresholds=policy.get("thresholds"))
        except EdgetierError as exc:
            raise EdgetierError(exc.problem, where=f"variant {spec.name}: early_exit.target_accuracy",
                                fix=f"{exc.fix}; the trained stages are checkpointed, so rerun with --resume") from None
        exits = [{"after": after, "criterion": policy["criterion"], "threshold": t}
                 for after, t in zip(model.after, cal.thresholds, strict=True)]
        logits, taken = run_segments(sessions, specs, exits, data.test.x)
        every = run_all_exits(sessions, specs, data.test.x)
        metrics = _metrics(logits, taken, every, data.test.y, seg_macs)
        seg_latency = [latency_ms(files[s["file"]], _first_input(sessions, specs, data.test.x[:1], k),
                                  threads=1).median_ms for k, s in enumerate(specs)]
        cumulative = np.cumsum(seg_latency)
        share = np.array(metrics["exit_share"])
        total_bytes = sum(files[s["file"]].stat().st_size for s in specs)
        full_macs = int(sum(seg_macs))
        stats = [model_stats(files[s["file"]]) for s in specs]
        estimate = estimate_latency(target, macs=int(metrics["mean_macs"]), weight_bytes=total_bytes,
                                    activation_bytes=0, precision=precision) \
            if precision in target.supported_precisions else None
        exits_report = {**metrics, "thresholds": list(cal.thresholds), "criterion": policy["criterion"],
                        "target_accuracy": cal.target_accuracy, "curve": [list(c) for c in cal.curve],
                        "segment_latency_ms": seg_latency, "segment_macs": seg_macs,
                        "segment_bytes": [files[s["file"]].stat().st_size for s in specs], "full_macs": full_macs,
                        "expected_latency_ms": float((share * cumulative).sum())}
        figures, stages = bundle_figures(stages)  # plots the stages drew ship inside the bundle
        files.update(figures)
        entry = ModelReport(
            name=spec.name, target=target.name, tier=target.tier, runtime="litert" if fmt == "tflite" else "onnxruntime", format=fmt,
            precision=precision, bytes=total_bytes, compressed_bytes=sum(compressed_bytes(files[s["file"]]) for s in specs),
            params=sum(s["params"] for s in stats), torch_params=count_params(model),
            nonzero_params=count_nonzero(model), macs=int(round(metrics["mean_macs"])),
            accuracy=metrics["accuracy"], torch_accuracy=metrics["final_accuracy"],
            latency_ms=exits_report["expected_latency_ms"], latency_p90_ms=float(cumulative[-1]), latency_threads=1,
            estimated_latency_ms=estimate.ms if estimate else None,
            parity={"segments": len(specs), "samples": PARITY_SAMPLES,
                    **({"top1_agreement": agreement, "segment_top1_agreement": segment_agreement} if quantize else {}),
                    **({"sparse_storage": {**sparse, "bitwise_equal_outputs": True}} if sparse["tensors"] else {})},
            stages=tuple(stages),
            notes=tuple(notes + ["macs and latency_ms are means over the test split under the exit policy; "
                                 "latency_p90_ms is the full chain"]), exits=exits_report,
        ).to_dict()
        if figures:
            entry["figures"] = sorted(figures)
        manifest = _manifest(spec, data, example_inputs, precision, export_plan)
        manifest["model"] = {"format": fmt, "precision": precision, "segments": specs}
        manifest["exits"] = exits
        report = {"recipe": spec.recipe_name, "models": [entry], "notes": list(entry["notes"])}
        write_bundle(out_dir, files=files, manifest=manifest, report=report, report_md=render_markdown(report))
    return entry


def _int8_segment(path: Path, segment: torch.nn.Module, calib: torch.Tensor, x_check: np.ndarray,
                  plan: ExportPlan, *, fmt: str, feed: torch.Tensor) -> tuple[Path, float]:
    """Segment k in static int8, calibrated on `calib` (its float inputs), and the top-1 agreement of its first
    output (the exit's logits, or the final logits) with PyTorch on the same float inputs."""
    out = path.with_name(f"{path.stem}.int8{path.suffix}")
    if fmt == "tflite":
        out = export_tflite(segment.eval(), (feed,), out, calib=calib.numpy(), per_channel=plan.per_channel,
                            calibration=plan.calibration)
        parity = check_parity_tflite(out, segment, x_check, atol=float("inf"), rtol=float("inf"))
    else:
        out = quantize_int8_static(path, out, calib.numpy(), per_channel=plan.per_channel,
                                   calibration=plan.calibration, activations=plan.activations)
        parity = check_parity(out, segment, x_check, atol=float("inf"), rtol=float("inf"))
    return out, parity.top1_agreement


def _sparse_segment(path: Path, input_name: str, x: np.ndarray, sparse: dict[str, Any]) -> Path:
    """The ONNX segment with its sparse weights stored sparse (`export.sparse_store`), when onnxruntime gives
    bit-identical outputs (every one: exit logits and features) on `x`; else the dense segment."""
    stored_path = path.with_name(f"{path.stem}.sparse.onnx")
    stored = store_sparse_file(path, stored_path)
    if not stored.tensors:
        return path
    dense = open_model(path, threads=2).run(None, {input_name: x})
    rebuilt = open_model(stored_path, threads=2).run(None, {input_name: x})
    if not all(np.array_equal(a, b) for a, b in zip(dense, rebuilt, strict=True)):
        return path
    sparse["tensors"] += stored.tensors
    sparse["dense_bytes"] += stored.dense_bytes
    sparse["stored_bytes"] += stored.stored_bytes
    sparse["segments"].append(int(path.stem.split("_")[-1]))
    return stored_path


def _first_input(sessions: list, specs: list[dict[str, Any]], x: np.ndarray, k: int) -> np.ndarray:
    """The input segment k sees for `x` (the features after the segments before it)."""
    feed = x
    for session, spec in zip(sessions[:k], specs[:k], strict=True):
        feed = session.run(None, {spec["input"]: feed})[1]
    return feed


def _metrics(logits: np.ndarray, taken: np.ndarray, every: list[np.ndarray], y: np.ndarray,
             seg_macs: list[int]) -> dict[str, Any]:
    n_exits = len(every)
    share = [float((taken == k).mean()) for k in range(n_exits)]
    cumulative = np.cumsum(seg_macs)
    return {
        "accuracy": float((logits.argmax(1) == y).mean()),
        "exit_share": share,
        "exit_accuracy_all_samples": [float((e.argmax(1) == y).mean()) for e in every],
        "final_accuracy": float((every[-1].argmax(1) == y).mean()),
        "mean_macs": float((np.array(share) * cumulative).sum()),
        "mean_macs_ratio": float((np.array(share) * cumulative).sum() / cumulative[-1]),
    }
