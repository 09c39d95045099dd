"""`ptq_int8`: one-shot static int8 post-training quantization of the exported graph.

The quantization itself happens on the exported file: onnxruntime.quantization (QDQ format) for
ONNX, PT2E for LiteRT, with activation ranges from the stage's `calibration` (MinMax, percentile,
entropy or MSE; `compress.quant.calibration` has the default per target). That is what the
runtime executes, so that is what gets smaller. `apply` only runs the label-free transforms that
prepare the PyTorch model for it (cross-layer equalization, bias correction,
`compress.quant.equalize`; learned rounding, `compress.quant.learned_round`, or label-free
distillation under simulated int8, `compress.quant.int8_distill`, whose int8 weights the
exporter's quantizer keeps as they are) and hands the exporter an `ExportPlan`; `smoothquant` asks
the exporter to smooth the activations LayerNorms write into weight MatMuls before int8
(`export.smoothquant`; transformers exported by `compress.export`); with `max_loss` /
`min_agreement` the exporter keeps the most sensitive layers in fp32 until the bound holds
(`compress.quant.accuracy_aware`), except on int8-only targets, which cannot run fp32 layers.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from compress.core.adapter import AdaptedModule
from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, ExportPlan, Result
from compress.quant.calibration import Calibration, default_calibration, int8_only, supported_calibrations
from compress.targets import Target


class Int8DistillSpec(BaseModel):
    """Label-free distillation under simulated int8 (`compress.quant.int8_distill`): how long and how fast."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(300, ge=1, le=100_000, description="optimizer steps")
    lr: float = Field(2e-5, gt=0, le=1, description="Adam learning rate, decayed to 0 by a cosine")
    batch_size: int = Field(16, ge=1, le=4096)
    samples: int | None = Field(None, gt=0, description="unlabeled training inputs drawn from (default: all)")


class SmoothQuantSpec(BaseModel):
    """SmoothQuant-style smoothing of the activations LayerNorms write into weight MatMuls, applied to the
    exported graph before int8 (`export.smoothquant`): calibrated on unlabelled rows, fp32 unchanged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.5, gt=0, lt=1, description="how much of the activations' range moves into the weights: "
                         "s_j = max|x_j|^alpha / max|w_j|^(1 - alpha)")


class PTQInt8Config(TechniqueConfig):
    """Static int8 PTQ of the whole graph.

    >>> PTQInt8Config(calib_samples=128, calibration="entropy").to_dict()["calibration"]
    'entropy'
    """

    kind: Literal["ptq_int8"] = "ptq_int8"
    per_channel: bool = Field(True, description="one weight scale per output channel (else per tensor)")
    calib_samples: int = Field(256, gt=0, le=100_000, description="calibration samples drawn from the calib split")
    calibration: Calibration | None = Field(
        None, description="activation ranges: minmax, percentile, entropy or mse; default: the target's")
    equalize: bool = Field(False, description="cross-layer equalization of Conv/Linear pairs joined by ReLU")
    bias_correction: bool = Field(False, description="remove the mean output shift weight rounding causes")
    learned_rounding: bool = Field(False, description="AdaRound: choose each int8 weight's rounding to keep every "
                                   "layer's output on the calibration inputs (no labels); BatchNorm is folded first")
    distill: Int8DistillSpec | None = Field(
        None, description="label-free distillation: the weights are trained, with int8 rounding simulated, to give "
        "the stage's input model's outputs on the train split's inputs (labels unused); last, on the int8 grid")
    max_loss: float | None = Field(None, ge=0, le=100, description="accuracy-aware: keep layers in fp32 until "
                                   "the int8 file loses at most this many points of validation accuracy")
    min_agreement: float | None = Field(None, gt=0, le=1, description="accuracy-aware without labels: until "
                                        "the int8 file keeps fp32's top-1 answer on this share of validation inputs")
    smoothquant: SmoothQuantSpec | None = Field(
        None, description="SmoothQuant-style smoothing of LayerNorm outputs into the MatMul weights before int8 "
        "(transformers exported through compress.export; an ONNX target)")
    activations: Literal["int8", "uint8"] = Field(
        "int8", description="how the ONNX file stores activations: int8 (onnxruntime's default S8S8) or uint8, which "
        "onnxruntime on x86 fuses into integer kernels even where a tensor feeds two layers (export.quantize)")

    @model_validator(mode="after")
    def _whole_graph_only(self) -> PTQInt8Config:
        if self.targets or self.ignore:
            raise ValueError("ptq_int8 quantizes the whole graph; per-layer choices belong to qat / mixed_precision")
        if self.distill is not None and self.learned_rounding:
            raise ValueError("learned_rounding and distill both choose the int8 weights; use one of them")
        if self.max_loss is not None and self.min_agreement is not None:
            raise ValueError("give max_loss (points, with labels) or min_agreement (share, no labels), not both")
        return self

    def check_target(self, target: Target) -> None:
        if "int8" not in target.supported_precisions:
            raise EdgetierError(
                f"target {target.name!r} does not run int8 (it supports {', '.join(target.supported_precisions)})",
                fix="skip this stage for that variant or choose a target with int8 support")
        allowed = supported_calibrations(target)
        if self.calibration is not None and self.calibration not in allowed:
            raise EdgetierError(
                f"calibration {self.calibration!r} is not available for target {target.name!r}: its {target.runtime} "
                f"path quantizes with torch.ao observers, which offer {', '.join(allowed)}",
                fix=f"set calibration to one of {', '.join(allowed)}, or leave it out for the target's default")
        if self.activations != "int8" and target.runtime != "onnxruntime":
            raise EdgetierError(
                f"activations {self.activations!r} choose how onnxruntime's quantizer stores activations; target "
                f"{target.name!r} exports {target.export_format}, whose int8 path has its own activation type",
                fix="remove activations for this variant, or export it to an onnxruntime target")
        if self.distill is not None and target.runtime != "onnxruntime":
            raise EdgetierError(
                f"distill writes the weights on the int8 grid onnxruntime's quantizer keeps; target {target.name!r} "
                f"exports {target.export_format} through PT2E, which rounds them again",
                fix="remove distill for this variant, or export it to an onnxruntime target")
        if self.learned_rounding and target.runtime != "onnxruntime":
            raise EdgetierError(
                f"learned_rounding is checked to survive onnxruntime's int8 quantizer only (its weights are written "
                f"on that grid); target {target.name!r} exports {target.export_format} through PT2E",
                fix="remove learned_rounding for this variant, or export it to an onnxruntime target")
        if self.smoothquant is not None and target.runtime != "onnxruntime":
            raise EdgetierError(
                f"smoothquant rewrites the ONNX graph before onnxruntime's int8 quantizer; target {target.name!r} "
                f"exports {target.export_format} through PT2E", where="ptq_int8.smoothquant",
                fix="remove smoothquant for this variant, or export it to an onnxruntime target")
        if (self.max_loss is not None or self.min_agreement is not None) and target.runtime != "onnxruntime" \
                and not int8_only(target):
            raise EdgetierError(
                f"the accuracy-aware mode (max_loss / min_agreement) keeps layers in fp32 through onnxruntime's "
                f"quantizer; target {target.name!r} exports {target.export_format}",
                fix="remove max_loss / min_agreement for this variant, or export it to an onnxruntime target")

    def check_model(self, model: nn.Module, target: Target | None) -> None:
        if self.smoothquant is not None and not isinstance(model, AdaptedModule):
            raise EdgetierError(
                f"smoothquant acts where compress.export quantizes a transformer graph (Hugging Face models); this "
                f"variant's {type(model).__name__} is exported by the static QDQ path, which does not smooth",
                where="ptq_int8.smoothquant", fix="remove smoothquant for this variant, or load the model with "
                "compress.models.hf.load_hf")


_KEPT: list[tempfile.TemporaryDirectory] = []  # reference files of stages run outside a pipeline (no workdir)


def _export_reference(model: nn.Module, ctx: Context) -> str:
    """The fp32 ONNX file of `model` in the stage's folder (kept with the run's checkpoints, so a resumed run
    finds it), or in a folder kept until the process exits when the stage runs outside a pipeline."""
    from export.onnx import export_onnx

    if ctx.workdir is not None:
        folder = ctx.workdir
    else:
        _KEPT.append(tempfile.TemporaryDirectory(prefix="edgetier-ptq-"))
        folder = Path(_KEPT[-1].name)
    folder.mkdir(parents=True, exist_ok=True)
    return str(export_onnx(copy.deepcopy(model).eval(), ctx.example_inputs, folder / "reference.fp32.onnx"))


class PTQInt8(BaseTechnique):
    config_type = PTQInt8Config
    config: PTQInt8Config

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        cfg = self.config
        if any(type(m).__module__.startswith("brevitas.") for m in model.modules()):
            raise EdgetierError("the model was already quantized by a qat / mixed_precision stage; its export is a "
                                "QCDQ graph with its own integer weights, which ptq_int8 would not use",
                                where="ptq_int8", fix="remove the ptq_int8 stage from this variant (skip it)")
        calibration = cfg.calibration or default_calibration(ctx.target)
        litert = ctx.target is not None and ctx.target.runtime == "litert"
        report: dict = {
            "artifact": f"int8 {'.tflite via PT2E' if litert else 'QDQ ONNX via onnxruntime.quantization'} (static)",
            "calibration": calibration, "calibration_from": "recipe" if cfg.calibration else "target default",
            "per_channel": cfg.per_channel, "calib_samples": cfg.calib_samples, "activations": cfg.activations,
            "notes": []}
        bound = cfg.max_loss is not None or cfg.min_agreement is not None
        reference: str | None = None
        if cfg.equalize or cfg.bias_correction or cfg.learned_rounding or cfg.distill:
            from compress.quant.equalize import bias_correct, equalize

            if ctx.data is None:
                raise EdgetierError("equalize / bias_correction / learned_rounding / distill need calibration inputs",
                                    where="ptq_int8", fix="run the stage with a dataset (the recipe's data)")
            calib = ctx.data.calib.x[:cfg.calib_samples]
            teacher = copy.deepcopy(model).eval() if cfg.distill else None  # the function the int8 file keeps
            if cfg.equalize:
                model, pairs = equalize(model)
                report["equalized_pairs"] = len(pairs)
            if bound and not litert and (cfg.bias_correction or cfg.learned_rounding or cfg.distill):
                reference = _export_reference(model, ctx)
                report["bound_reference"] = ("the model before bias correction / learned rounding / distillation "
                                             "(after equalization, which keeps its function): the bound is measured "
                                             "against it and layers kept in fp32 take its weights")
            if cfg.bias_correction:
                report["bias_corrected_layers"] = len(bias_correct(model, calib, per_channel=cfg.per_channel))
            if cfg.learned_rounding:  # last: it puts the weights on the int8 grid the exporter keeps
                from compress.quant.learned_round import learned_rounding

                model, layers = learned_rounding(model, calib, per_channel=cfg.per_channel)
                report["learned_rounding"] = {
                    "layers": len(layers), "learned": sum(r.flipped > 0 for r in layers),
                    "weights_flipped": sum(r.flipped for r in layers) / max(len(layers), 1),
                    "calib_error_vs_nearest": (sum(r.learned_error for r in layers)
                                               / max(sum(r.nearest_error for r in layers), 1e-30))}
            if cfg.distill:  # last: it puts the weights on the int8 grid the exporter keeps
                from compress.quant.int8_distill import distill_int8

                spec = cfg.distill
                task = ctx.progress.task("ptq_int8: distillation under simulated int8", total=spec.steps)
                model, done = distill_int8(model, ctx.data.train.x[:spec.samples], calib, teacher=teacher,
                                           steps=spec.steps, lr=spec.lr, batch_size=spec.batch_size,
                                           per_channel=cfg.per_channel, seed=ctx.seed,
                                           progress=lambda _step, _loss: ctx.progress.advance(task))
                ctx.progress.done(task)
                report["distill"] = {**done.to_dict(), "inputs": "train split, labels unused",
                                     "lr": spec.lr, "batch_size": spec.batch_size}
        if cfg.smoothquant is not None:
            report["smoothquant"] = {"alpha": cfg.smoothquant.alpha, "applied": "by the exporter, on the ONNX graph "
                                     "before int8 (the model's report entry says what it smoothed)"}
        fallback = bound and not int8_only(ctx.target)
        if bound and not fallback:
            report["notes"].append(
                f"target {ctx.target.name} runs int8 only: no layer can fall back to fp32, so the accuracy bound is "
                "measured and reported but only calibration / equalization / bias correction can meet it")
        plan = ExportPlan(quantize="int8_static", per_channel=cfg.per_channel, calib_samples=cfg.calib_samples,
                          calibration=calibration, max_loss=cfg.max_loss, min_agreement=cfg.min_agreement,
                          fallback=fallback, activations=cfg.activations,
                          smoothquant=cfg.smoothquant.alpha if cfg.smoothquant else None, reference=reference)
        return Result(model, report, export=plan)
