"""Export one model for its target, check it against PyTorch, measure it, and write its bundle.

The format follows the target's runtime (`export_format`: .onnx for onnxruntime, .tflite for
LiteRT); a recipe may ask for more formats, which are exported, verified and shipped alongside.
Every number in the report is measured here on the exported file: its bytes on disk, its
parameters, its accuracy in its runtime on the test split and its batch-1 latency in that
runtime on this host. MACs are counted on the PyTorch model that was exported, and the target's
latency is estimated from them with the roofline in `compress.targets.latency`, or from a device
profile (`export.profile`) when the run has one. The file must fit the target's storage and RAM
budgets (`export.limits`), or the variant fails with the numbers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.core.errors import EdgetierError, TargetError
from compress.core.measure import activation_bytes, count_macs, count_nonzero, count_params
from compress.core.report import ModelReport, StageReport, bundle_figures
from compress.core.technique import ExportPlan
from compress.core.train import predict
from compress.datasets import Dataset
from compress.share.layers import densified
from compress.targets import Target
from compress.targets.latency import estimate_latency
from export.bundle import write_bundle
from export.errors import ParityError
from export.inspect import PARITY_FILE, parity_npz
from export.limits import check_limits
from export.measure import compressed_bytes, latency_ms, model_stats
from export.onnx import Parity, check_parity, export_onnx
from export.profile import latency_from_profile
from export.qcdq import export_qcdq
from export.quantize import quantize_int8_static
from export.report import render_markdown
from export.runtime import open_model
from export.sparse_store import store_sparse_file
from export.tflite import check_parity_tflite, export_tflite

LATENCY_THREADS = 1
PARITY_SAMPLES = 256
PARITY_KEPT = 16


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
    formats: tuple[str, ...] = ()  # empty: the target's export_format; else the first is the bundle's model
    profile: dict[str, Any] | None = field(default=None, compare=False)  # a device profile (export.profile)

    @property
    def export_formats(self) -> tuple[str, ...]:
        return self.formats or (self.target.export_format,)


def _logits(path: Path, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    session = open_model(path, threads=2)  # accuracy, not latency: use both cores
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class _Exported:
    """The file to ship and what the export checked: `compute_precision` keys the latency estimate."""

    path: Path
    parity: Parity
    precision: str
    compute_precision: str
    parity_extra: dict[str, Any] = field(default_factory=dict)


def _export_float(model: nn.Module, spec: BundleSpec, example_inputs: tuple[torch.Tensor, ...], x_check: np.ndarray,
                  tmp: Path, data: Dataset, export_plan: ExportPlan | None, *, fmt: str) -> _Exported:
    """fp32 `.onnx` (torch.onnx) or `.tflite` (litert-torch), checked against the target's tolerance, then
    the plan's static int8 if any: onnxruntime's QDQ quantizer on the ONNX file, PT2E for LiteRT."""
    target = spec.target
    label = {"onnx": "ONNX", "tflite": ".tflite"}[fmt]
    if fmt == "tflite":
        fp32_path = export_tflite(model, example_inputs, tmp / "model.fp32.tflite")
        check = check_parity_tflite
    else:
        fp32_path = export_onnx(model, example_inputs, tmp / "model.fp32.onnx")
        check = check_parity
    parity = check(fp32_path, model, x_check, atol=target.tolerance.atol, rtol=target.tolerance.rtol)
    if not parity.passed:
        raise ParityError(f"fp32 {label} differs from PyTorch by {parity.max_abs_diff:.3g} (tolerance atol "
                          f"{target.tolerance.atol}, rtol {target.tolerance.rtol})", where=spec.name,
                          fix="report this model; an operator exports differently from its PyTorch meaning")
    quantize = export_plan.quantize if export_plan else None
    if quantize is None:
        return _Exported(fp32_path, parity, "fp32", "fp32")
    if quantize != "int8_static":  # pragma: no cover - ExportPlan values come from registered techniques
        raise EdgetierError(f"unknown export quantization {quantize!r}")
    calib = data.calib.x[:export_plan.calib_samples]
    extra: dict[str, Any] = {"fp32_bytes": fp32_path.stat().st_size, "calibration": export_plan.calibration}
    if fmt == "tflite":
        final_path = export_tflite(model, example_inputs, tmp / "model.tflite", calib=calib,
                                   per_channel=export_plan.per_channel, calibration=export_plan.calibration)
    elif export_plan.max_loss is not None or export_plan.min_agreement is not None:
        from compress.quant.accuracy_aware import accuracy_aware_int8

        search = accuracy_aware_int8(fp32_path, tmp / "model.onnx", calib, data.val.x, data.val.y,
                                     max_loss=export_plan.max_loss, min_agreement=export_plan.min_agreement,
                                     calibration=export_plan.calibration, per_channel=export_plan.per_channel,
                                     fallback=export_plan.fallback, activations=export_plan.activations,
                                     reference=export_plan.reference)
        final_path, extra["accuracy_aware"] = search.path, search.to_dict()
    else:
        final_path = quantize_int8_static(fp32_path, tmp / "model.onnx", calib, per_channel=export_plan.per_channel,
                                          calibration=export_plan.calibration, activations=export_plan.activations)
    parity = check(final_path, model, x_check, atol=float("inf"), rtol=float("inf"))
    need = target.tolerance.quantized_top1_agreement
    if parity.top1_agreement < need:
        raise ParityError(f"int8 {label} agrees with PyTorch on top-1 for {parity.top1_agreement:.1%} of "
                          f"{len(x_check)} test samples, below the target's {need:.0%}", where=spec.name,
                          fix="skip ptq_int8 for this variant or fine-tune with quantization-aware training")
    return _Exported(final_path, parity, "int8", "int8", extra)


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
    return _Exported(out.path, parity, out.precision, compute, extra)


def _stored_sparse(exported: _Exported, x_check: np.ndarray, notes: list[str], *, where: str) -> _Exported:
    """The ONNX file with its sparse weights stored sparse (`export.sparse_store`) when that makes it smaller.

    The rebuilt tensors are the same bits, so onnxruntime must give bit-identical outputs on the parity
    samples; the dense file, already checked against PyTorch, is the reference. Were they to differ
    (an optimizer pass that treats the folded tensors otherwise), the dense file ships and the note says why.
    """
    if exported.path.suffix != ".onnx":
        return exported
    sparse_path = exported.path.with_name(f"{exported.path.stem}.sparse.onnx")
    stored = store_sparse_file(exported.path, sparse_path)
    if not stored.tensors:
        return exported
    dense, sparse = _logits(exported.path, x_check), _logits(sparse_path, x_check)
    if not np.array_equal(dense, sparse):
        notes.append(f"sparse weight storage not used: onnxruntime's outputs changed by up to "
                     f"{float(np.abs(dense - sparse).max()):.3g} on {len(x_check)} test samples ({where})")
        return exported
    notes.append(stored.note())
    return replace(exported, path=sparse_path, parity_extra={**exported.parity_extra, "sparse_storage": {
        "tensors": stored.tensors, "dense_bytes": stored.dense_bytes, "stored_bytes": stored.stored_bytes,
        "bitwise_equal_outputs": True}})


_CODEBOOK_KINDS = ("cluster", "hash_share")


def _export_as(fmt: str, model: nn.Module, spec: BundleSpec, example_inputs: tuple[torch.Tensor, ...],
               x_check: np.ndarray, tmp: Path, data: Dataset, export_plan: ExportPlan | None,
               stages: list[StageReport], notes: list[str]) -> _Exported:
    """One format's file; what the format cannot carry is said in `notes`, with what was exported instead."""
    tmp.mkdir(parents=True, exist_ok=True)
    exporter = export_plan.exporter if export_plan else "onnx"
    if exporter not in ("onnx", "qcdq"):  # pragma: no cover - ExportPlan values come from registered techniques
        raise EdgetierError(f"unknown exporter {exporter!r}")
    if exporter == "qcdq":
        if fmt == "tflite":
            notes.append("LiteRT cannot carry the sub-8-bit / QAT weights of this model (.tflite has no QCDQ "
                         "low-bit storage); the brevitas QCDQ .onnx was exported and measured in onnxruntime instead")
        return _export_qcdq(model, spec, example_inputs, x_check, tmp, notes)
    if fmt == "tflite":
        shared = [s.stage for s in stages if s.kind in _CODEBOOK_KINDS]
        if shared:
            notes.append(f"LiteRT has no codebook / hashed weight storage: the weights of {', '.join(shared)} are "
                         "stored dense in the .tflite (the shared values survive only in its compressed size)")
            model = densified(model)  # litert-torch cannot lower the in-graph rebuild (bit shifts, gathers)
    return _export_float(model, spec, example_inputs, x_check, tmp, data, export_plan, fmt=fmt)


def _estimated_ms(spec: BundleSpec, exported: _Exported, *, fmt: str, macs: int, weight_bytes: int, act_bytes: int,
                  notes: list[str]) -> float | None:
    target = spec.target
    if spec.profile is not None:
        ms = latency_from_profile(spec.profile, target=target.name, fmt=fmt, precision=exported.precision, macs=macs)
        if ms is not None:
            notes.append(f"estimated latency from the device profile of {target.name} (measured ms x MACs ratio), "
                         "not the roofline")
            return ms
        notes.append(f"the device profile has no {fmt} {exported.precision} entry for {target.name}: roofline used")
    try:
        return estimate_latency(target, macs=macs, weight_bytes=weight_bytes, activation_bytes=act_bytes,
                                precision=exported.compute_precision).ms
    except TargetError as exc:
        notes.append(f"no latency estimate: {exc.problem}")
        return None


def deploy(model: nn.Module, spec: BundleSpec, *, data: Dataset, example_inputs: tuple[torch.Tensor, ...],
           export_plan: ExportPlan | None, stages: list[StageReport], out_dir: Path) -> dict[str, Any]:
    """Export `model` into the bundle folder `out_dir` and return its report entry.

    Raises `export.limits.LimitError` (nothing written) when the file does not fit the target's budgets.
    """
    model = model.eval()
    target = spec.target
    notes = _stage_notes(stages)
    fmt, *more = spec.export_formats
    with tempfile.TemporaryDirectory(prefix="edgetier-export-") as tmp:
        x_check = data.test.x[:PARITY_SAMPLES]
        exported = _export_as(fmt, model, spec, example_inputs, x_check, Path(tmp) / fmt, data, export_plan, stages,
                              notes)
        exported = _stored_sparse(exported, x_check, notes, where=spec.name)
        final_path, parity, precision = exported.path, exported.parity, exported.precision
        fmt = "tflite" if final_path.suffix == ".tflite" else "onnx"  # qcdq falls back to onnx
        limits = check_limits(final_path, storage_kb=target.memory.storage_kb, ram_kb=target.memory.ram_kb,
                              target=target.name, where=f"variant {spec.name}")
        stats = model_stats(final_path)
        accuracy = float((_logits(final_path, data.test.x).argmax(1) == data.test.y).mean())
        torch_accuracy = float((predict(model, data.test.x).argmax(1) == data.test.y).mean())
        timing = latency_ms(final_path, data.test.x[:1], threads=LATENCY_THREADS)
        with _frozen_params(model):
            macs = count_macs(model, example_inputs)
        act_bytes = activation_bytes(model, example_inputs, bytes_per_element=1 if precision != "fp32" else 4)
        estimated_ms = _estimated_ms(spec, exported, fmt=fmt, macs=macs, weight_bytes=stats["bytes"],
                                     act_bytes=act_bytes, notes=notes)
        # a few inputs and PyTorch's outputs, so `edgetier inspect` can re-run parity from the bundle alone
        kept = x_check[:PARITY_KEPT]
        files: dict[str, Path | bytes] = {f"model.{fmt}": final_path,
                                          PARITY_FILE: parity_npz(kept, predict(model, kept))}
        alternates = []
        for extra in more:  # formats the recipe adds: exported, verified, shipped and measured alongside
            other = _export_as(extra, model, spec, example_inputs, x_check, Path(tmp) / extra, data, export_plan,
                               stages, notes)
            other = _stored_sparse(other, x_check, notes, where=spec.name)
            name = f"model{other.path.suffix}"
            if name in files:
                continue
            files[name] = other.path
            alternates.append({"file": name, "format": other.path.suffix[1:], "precision": other.precision,
                               "bytes": other.path.stat().st_size, "top1_agreement": other.parity.top1_agreement,
                               "latency_ms": latency_ms(other.path, data.test.x[:1], threads=LATENCY_THREADS).median_ms})
        figures, stages = bundle_figures(stages)  # plots the stages drew ship inside the bundle
        files.update(figures)
        entry = ModelReport(
            name=spec.name, target=target.name, tier=target.tier,
            runtime="litert" if fmt == "tflite" else "onnxruntime", format=fmt,
            precision=precision, bytes=stats["bytes"], compressed_bytes=compressed_bytes(final_path),
            params=stats["params"], torch_params=count_params(model),
            nonzero_params=count_nonzero(model), macs=macs, accuracy=accuracy, torch_accuracy=torch_accuracy,
            latency_ms=timing.median_ms, latency_p90_ms=timing.p90_ms, latency_threads=timing.threads,
            estimated_latency_ms=estimated_ms,
            parity={"max_abs_diff": parity.max_abs_diff, "top1_agreement": parity.top1_agreement,
                    "samples": len(x_check), **exported.parity_extra},
            stages=tuple(stages), notes=tuple(notes),
        ).to_dict()
        entry["limits"] = limits.to_dict()
        if figures:
            entry["figures"] = sorted(figures)
        if alternates:
            entry["alternates"] = alternates
        manifest = _manifest(spec, data, example_inputs, precision, export_plan)
        manifest["model"] = {"file": f"model.{fmt}", "format": fmt, "precision": precision,
                             **({"alternates": [{k: a[k] for k in ("file", "format", "precision")} for a in alternates]}
                                if alternates else {})}
        report = {"recipe": spec.recipe_name, "models": [entry], "notes": notes}
        write_bundle(out_dir, files=files, manifest=manifest, report=report, report_md=render_markdown(report))
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
        # the reference is a file of the build machine's run folder, not part of the bundle
        "export_plan": {k: v for k, v in export_plan.to_dict().items() if k != "reference"} if export_plan else None,
    }
