"""Export one model for its target, check it against PyTorch, measure it, and write its bundle.

Every number in the report is measured here on the exported file: its bytes on disk, its
parameters, its accuracy in onnxruntime on the test split and its batch-1 latency in
onnxruntime on this host. MACs are counted on the PyTorch model that was exported, and
the target's latency is estimated from them with the roofline in `compress.targets.latency`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.core.errors import EdgetierError, TargetError
from compress.core.measure import activation_bytes, count_macs, count_nonzero, count_params
from compress.core.report import ModelReport, StageReport
from compress.core.technique import ExportPlan
from compress.core.train import predict
from compress.datasets import Dataset
from compress.targets import Target
from compress.targets.latency import estimate_latency
from export.bundle import write_bundle
from export.errors import ParityError
from export.measure import compressed_bytes, latency_ms, onnx_stats
from export.onnx import Parity, check_parity, export_onnx
from export.qcdq import export_qcdq
from export.quantize import quantize_int8_static
from export.report import render_markdown
from export.runtime import make_session

LATENCY_THREADS = 1
PARITY_SAMPLES = 256


def toolkit_version() -> str:
    try:
        return version("edgetier")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def _stage_notes(stages: list[StageReport]) -> list[str]:
    """What stages said about the artifact (e.g. that unstructured sparsity does not cut latency)."""
    notes = []
    for stage in stages:
        said = stage.summary.get("note"), *stage.summary.get("notes", ())
        notes += [f"{stage.stage}: {text}" for text in said if text]
    return notes


@dataclass(frozen=True)
class BundleSpec:
    """Who the bundle is for: its name (`cloud`, `edge`, ...), target, recipe identity and seed."""

    name: str
    target: Target
    recipe_name: str
    recipe_sha256: str
    seed: int


def _onnx_logits(path: Path, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    session = make_session(path, threads=2)  # accuracy, not latency: use both cores
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class _Exported:
    """The file to ship and what the export checked: `compute_precision` keys the latency estimate;
    `unseen_params` are weight elements `onnx_stats` cannot count (INT4 tensors, packed int2)."""

    path: Path
    parity: Parity
    precision: str
    compute_precision: str
    parity_extra: dict[str, Any] = field(default_factory=dict)
    unseen_params: int = 0


def _export_float(model: nn.Module, spec: BundleSpec, example_inputs: tuple[torch.Tensor, ...], x_check: np.ndarray,
                  tmp: Path, data: Dataset, export_plan: ExportPlan | None) -> _Exported:
    """torch.onnx fp32 export, checked against the target's tolerance, then the plan's int8 PTQ if any."""
    target = spec.target
    quantize = export_plan.quantize if export_plan else None
    fp32_path = export_onnx(model, example_inputs, tmp / "model.fp32.onnx")
    parity = check_parity(fp32_path, model, x_check, atol=target.tolerance.atol, rtol=target.tolerance.rtol)
    if not parity.passed:
        raise ParityError(f"fp32 ONNX differs from PyTorch by {parity.max_abs_diff:.3g} (tolerance atol "
                          f"{target.tolerance.atol}, rtol {target.tolerance.rtol})", where=spec.name,
                          fix="report this model; an operator exports differently from its PyTorch meaning")
    if quantize is None:
        return _Exported(fp32_path, parity, "fp32", "fp32")
    if quantize != "int8_static":  # pragma: no cover - ExportPlan values come from registered techniques
        raise EdgetierError(f"unknown export quantization {quantize!r}")
    calib = data.calib.x[:export_plan.calib_samples]
    final_path = quantize_int8_static(fp32_path, tmp / "model.onnx", calib, per_channel=export_plan.per_channel)
    parity = check_parity(final_path, model, x_check, atol=float("inf"), rtol=float("inf"))
    need = target.tolerance.quantized_top1_agreement
    if parity.top1_agreement < need:
        raise ParityError(f"int8 ONNX agrees with PyTorch on top-1 for {parity.top1_agreement:.1%} of "
                          f"{len(x_check)} test samples, below the target's {need:.0%}", where=spec.name,
                          fix="skip ptq_int8 for this variant or fine-tune with quantization-aware training")
    return _Exported(final_path, parity, "int8", "int8")


def _export_qcdq(model: nn.Module, spec: BundleSpec, example_inputs: tuple[torch.Tensor, ...], x_check: np.ndarray,
                 tmp: Path, notes: list[str]) -> _Exported:
    """brevitas QCDQ export with low-bit weight storage, checked against the brevitas model itself.

    The reference is the quantized PyTorch model, so the float tolerance does not apply: the file
    must agree to within one output quantization step (the scale of the DequantizeLinear that
    produces the logits). A sample off by more is reported in the notes; the export fails only
    when top-1 agreement falls below the target's `quantized_top1_agreement`.
    """
    target = spec.target
    out = export_qcdq(model, example_inputs, tmp / "model.onnx")
    parity = check_parity(out.path, model, x_check, atol=float("inf"), rtol=float("inf"))
    need = target.tolerance.quantized_top1_agreement
    if parity.top1_agreement < need:
        raise ParityError(f"QCDQ ONNX agrees with the quantized PyTorch model on top-1 for {parity.top1_agreement:.1%} "
                          f"of {len(x_check)} test samples, below the target's {need:.0%}", where=spec.name,
                          fix="report this model: the exported graph computes something else than brevitas")
    extra: dict[str, Any] = {"reference": "quantized PyTorch model (brevitas)", "output_step": out.output_step}
    if out.output_step:
        extra["max_diff_steps"] = parity.max_abs_diff / out.output_step
        if extra["max_diff_steps"] > 1 + 1e-4:  # float rounding at the step size itself is not a difference
            notes.append(f"QCDQ ONNX output differs from the quantized PyTorch model by up to "
                         f"{extra['max_diff_steps']:.2f} output quantization steps on {len(x_check)} test samples")
    kinds = {p.kind for p in out.weights.values()}
    runs = target.supported_precisions
    compute = "int4" if kinds and kinds <= {"int2", "int4"} and "int4" in runs else "int8" if "int8" in runs else runs[0]
    notes.append(f"weights stored as {out.precision} in a QCDQ graph (opset {out.opset}): "
                 + ", ".join(f"{sum(1 for p in out.weights.values() if p.kind == k)} layers {k}" for k in sorted(kinds)))
    unseen = sum(p.params for p in out.weights.values() if p.kind in ("int2", "int4"))
    return _Exported(out.path, parity, out.precision, compute, extra, unseen)


def deploy(model: nn.Module, spec: BundleSpec, *, data: Dataset, example_inputs: tuple[torch.Tensor, ...],
           export_plan: ExportPlan | None, stages: list[StageReport], out_dir: Path) -> dict[str, Any]:
    """Export `model` into the bundle folder `out_dir` and return its report entry."""
    model = model.eval()
    target = spec.target
    notes = _stage_notes(stages)
    if target.export_format != "onnx":
        notes.append(f"target {target.name} runs {target.runtime} ({target.export_format}); this version of edgetier "
                     "exports ONNX only, so the ONNX file was exported and measured in onnxruntime")
    with tempfile.TemporaryDirectory(prefix="edgetier-export-") as tmp:
        x_check = data.test.x[:PARITY_SAMPLES]
        exporter = export_plan.exporter if export_plan else "onnx"
        if exporter == "qcdq":
            exported = _export_qcdq(model, spec, example_inputs, x_check, Path(tmp), notes)
        elif exporter == "onnx":
            exported = _export_float(model, spec, example_inputs, x_check, Path(tmp), data, export_plan)
        else:  # pragma: no cover - ExportPlan values come from registered techniques
            raise EdgetierError(f"unknown exporter {exporter!r}")
        final_path, parity, precision = exported.path, exported.parity, exported.precision

        stats = onnx_stats(final_path)
        stats["params"] += exported.unseen_params
        accuracy = float((_onnx_logits(final_path, data.test.x).argmax(1) == data.test.y).mean())
        torch_accuracy = float((predict(model, data.test.x).argmax(1) == data.test.y).mean())
        timing = latency_ms(final_path, data.test.x[:1], threads=LATENCY_THREADS)
        with _frozen_params(model):
            macs = count_macs(model, example_inputs)
        act_bytes = activation_bytes(model, example_inputs, bytes_per_element=1 if precision != "fp32" else 4)
        try:
            estimate = estimate_latency(target, macs=macs, weight_bytes=stats["bytes"], activation_bytes=act_bytes,
                                        precision=exported.compute_precision)
            estimated_ms: float | None = estimate.ms
        except TargetError as exc:
            estimated_ms = None
            notes.append(f"no latency estimate: {exc.problem}")
        entry = ModelReport(
            name=spec.name, target=target.name, tier=target.tier, runtime="onnxruntime", format="onnx",
            precision=precision, bytes=stats["bytes"], compressed_bytes=compressed_bytes(final_path),
            params=stats["params"], torch_params=count_params(model),
            nonzero_params=count_nonzero(model), macs=macs, accuracy=accuracy, torch_accuracy=torch_accuracy,
            latency_ms=timing.median_ms, latency_p90_ms=timing.p90_ms, latency_threads=timing.threads,
            estimated_latency_ms=estimated_ms,
            parity={"max_abs_diff": parity.max_abs_diff, "top1_agreement": parity.top1_agreement,
                    "samples": len(x_check), **exported.parity_extra},
            stages=tuple(stages), notes=tuple(notes),
        ).to_dict()
        manifest = _manifest(spec, data, example_inputs, precision, export_plan)
        report = {"recipe": spec.recipe_name, "models": [entry], "notes": notes}
        write_bundle(out_dir, files={"model.onnx": final_path}, manifest=manifest, report=report,
                     report_md=render_markdown(report))
    return entry


@contextmanager
def _frozen_params(model: nn.Module) -> Iterator[None]:
    """Parameters temporarily not requiring grad: torch's FlopCounterMode fails on a module called on a
    parameter under no_grad ("Expected gradient function to be set"), which brevitas' weight quantizers are."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _manifest(spec: BundleSpec, data: Dataset, example_inputs: tuple[torch.Tensor, ...], precision: str,
              export_plan: ExportPlan | None) -> dict[str, Any]:
    t = spec.target
    return {
        "format_version": 1,
        "toolkit": {"name": "edgetier", "version": toolkit_version()},
        "recipe": {"name": spec.recipe_name, "sha256": spec.recipe_sha256},
        "variant": spec.name,
        "seed": spec.seed,
        "target": {"name": t.name, "tier": t.tier, "runtime": t.runtime,
                   "compute": t.compute.model_dump(mode="json"),
                   "link": t.link.model_dump(mode="json") if t.link else None,
                   "tolerance": t.tolerance.model_dump(mode="json")},
        "input": {"name": "input", "shape": [None, *example_inputs[0].shape[1:]], "dtype": "float32"},
        "output": {"name": "logits", "shape": [None, data.num_classes]},
        "labels": list(data.labels),
        "model": {"file": "model.onnx", "format": "onnx", "precision": precision},
        "export_plan": export_plan.to_dict() if export_plan else None,
    }
