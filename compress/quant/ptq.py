"""`ptq_int8`: one-shot static int8 post-training quantization of the exported graph.

The quantization itself happens on the ONNX file, with `onnxruntime.quantization`
(QDQ format, int8 weights and activations, MinMax calibration on the calibration split):
that is what the runtime executes, so that is what gets smaller. `apply` therefore leaves
the PyTorch model as it is and hands the exporter an `ExportPlan`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, ExportPlan, Result
from compress.targets import Target


class PTQInt8Config(TechniqueConfig):
    """Static int8 PTQ of the whole graph.

    >>> PTQInt8Config(calib_samples=128).to_dict()["kind"]
    'ptq_int8'
    """

    kind: Literal["ptq_int8"] = "ptq_int8"
    per_channel: bool = Field(True, description="one weight scale per output channel (else per tensor)")
    calib_samples: int = Field(256, gt=0, le=100_000, description="calibration samples drawn from the calib split")

    @model_validator(mode="after")
    def _whole_graph_only(self) -> PTQInt8Config:
        if self.targets or self.ignore:
            raise ValueError("ptq_int8 quantizes the whole graph; per-layer choices belong to qat / mixed_precision")
        return self

    def check_target(self, target: Target) -> None:
        if "int8" not in target.supported_precisions:
            raise EdgetierError(
                f"target {target.name!r} does not run int8 (it supports {', '.join(target.supported_precisions)})",
                fix="skip this stage for that variant or choose a target with int8 support")


class PTQInt8(BaseTechnique):
    config_type = PTQInt8Config
    config: PTQInt8Config

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        if any(type(m).__module__.startswith("brevitas.") for m in model.modules()):
            raise EdgetierError("the model was already quantized by a qat / mixed_precision stage; its export is a "
                                "QCDQ graph with its own integer weights, which ptq_int8 would not use",
                                where="ptq_int8", fix="remove the ptq_int8 stage from this variant (skip it)")
        plan = ExportPlan(quantize="int8_static", per_channel=self.config.per_channel,
                          calib_samples=self.config.calib_samples)
        report = {"artifact": "int8 QDQ ONNX via onnxruntime.quantization (static, MinMax)",
                  "per_channel": self.config.per_channel, "calib_samples": self.config.calib_samples}
        return Result(model, report, export=plan)
